"""The model zoo: one file per family, all built from ``aim.layers``; ``build_model(name, fields, **hp)``."""

from aim.models import afm, aim, autoint, deepfm, fm, ifm, pnn, xdeepfm  # noqa: F401  (importing a family registers its models)
from aim.models.base import MODELS, CTRModel, adam, build_model, hyperparameters, register

__all__ = ["MODELS", "CTRModel", "adam", "build_model", "hyperparameters", "register"]
