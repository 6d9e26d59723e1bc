"""What a search selects, as plain data: interactions (field positions), their function, and their gate.

An ``Interaction`` is one candidate of the search: e.g. fields (3, 17) under the inner product. The search
model takes a list of them (the ones being searched, plus any selected earlier that stay fixed); a search
ends by keeping those whose gate is not exactly zero. Algorithm 1 of the AIM paper builds the candidates
of order p from the top-k of order p-1 crossed with every field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from aim.layers.interaction import FUNCTIONS


@dataclass(frozen=True)
class Interaction:
    """An interaction of ``len(fields)`` fields (sorted positions) under ``function``, with its gate value."""

    fields: tuple[int, ...]
    function: str = "inner"
    gate: float = 1.0

    @property
    def order(self) -> int:
        return len(self.fields)


def all_pairs(num_fields: int, functions: Sequence[str] = ("inner",), gate: float = 1.0) -> list[Interaction]:
    """Every 2nd-order pair i < j under every function: the search space of FIS (one function) or FIS+IFS."""
    _check_functions(functions)
    return [Interaction((i, j), f, gate) for i in range(num_fields) for j in range(i + 1, num_fields)
            for f in functions]


def combine(top: Iterable[tuple[int, ...]], num_fields: int, functions: Sequence[str] = ("inner",),
            gate: float = 1.0) -> list[Interaction]:
    """Algorithm 1, line 4: each top interaction of order p-1 times each field not in it, deduplicated."""
    _check_functions(functions)
    seen: dict[tuple[int, ...], None] = {}
    for fields in top:
        for f in range(num_fields):
            if f not in fields:
                seen.setdefault(tuple(sorted((*fields, f))), None)
    return [Interaction(fields, fn, gate) for fields in seen for fn in functions]


def importance(interactions: Iterable[Interaction]) -> dict[tuple[int, ...], float]:
    """|gate| summed over an interaction's functions: how much the search says a field set matters."""
    total: dict[tuple[int, ...], float] = {}
    for it in interactions:
        total[it.fields] = total.get(it.fields, 0.0) + abs(it.gate)
    return total


def top_k(interactions: Iterable[Interaction], k: int) -> list[tuple[int, ...]]:
    """Algorithm 1, lines 6-7: the k field sets of highest importance among the open ones (ties: by position)."""
    ranked = sorted(((-v, fields) for fields, v in importance(interactions).items() if v > 0))
    return [fields for _, fields in ranked[:k]]


def kept(interactions: Iterable[Interaction], gates: Sequence[float]) -> list[Interaction]:
    """The interactions whose searched gate is not exactly zero, carrying that gate (negative ones too)."""
    return [replace(it, gate=float(g)) for it, g in zip(interactions, gates, strict=True) if g != 0.0]


def _check_functions(functions: Sequence[str]) -> None:
    unknown = [f for f in functions if f not in FUNCTIONS]
    if unknown or not functions:
        raise ValueError(f"unknown interaction function(s) {unknown}; choose from {list(FUNCTIONS)}")
