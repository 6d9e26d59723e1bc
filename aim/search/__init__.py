"""The search: gates and GRDA, candidate interactions (Algorithm 1), and what a search keeps."""

from aim.search.architecture import Interaction, all_pairs, combine, importance, kept, top_k
from aim.search.grda import GRDA, length_scaled_c

__all__ = ["GRDA", "Interaction", "all_pairs", "combine", "importance", "kept", "length_scaled_c", "top_k"]
