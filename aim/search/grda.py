"""GRDA, generalized regularized dual averaging (Chao & Cheng 2019): the optimizer that gives gates exact zeros.

Per parameter it keeps an accumulator ``acc`` that starts at the parameter's initial value and sums the
scaled gradients, ``acc -= lr * grad``. The parameter is the accumulator soft-thresholded by an l1 level
that grows with the step count,

    l1(t) = c * sqrt(lr) * (lr * t) ** mu,        param = sign(acc) * max(|acc| - l1(t), 0).

Gates whose gradients do not agree in sign random-walk (|acc| grows like sqrt(t)) while l1 grows like
t**mu with mu > 0.5, so they end exactly at zero; gates with a steady signal grow like t and stay open.
l1 is grown by increments computed with the *current* learning rate, so decaying the learning rate slows
the threshold too (as in the reference implementation), instead of jumping it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


def length_scaled_c(c: float, mu: float, steps: int, reference_steps: int | None) -> float:
    """``c`` for a search of ``steps`` steps, given that ``c`` was chosen for one of ``reference_steps``.

    The threshold at the last step, ``c * sqrt(lr) * (lr * T)**mu``, grows with the search's length T, so one
    ``c`` prunes less on a small log (few steps) than on a large one. ``c * (reference / T)**mu`` makes every
    search end at the threshold the reference search ends at, whatever the log's size. None: no scaling.
    """
    if reference_steps is None:
        return c
    if steps < 1:
        raise ValueError(f"GRDA: a search needs at least one step, got {steps}")
    return c * (reference_steps / steps) ** mu


class GRDA(Optimizer):
    """``GRDA(params, lr=0.01, c=0.005, mu=0.7)``; ``c`` and ``mu`` trade accuracy for sparsity (larger: sparser)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 0.01, c: float = 0.005, mu: float = 0.7) -> None:
        if lr <= 0:
            raise ValueError(f"GRDA: lr must be > 0, got {lr}")
        if c < 0:
            raise ValueError(f"GRDA: c must be >= 0, got {c}")
        if not 0 <= mu < 1:
            raise ValueError(f"GRDA: mu must be in [0, 1), got {mu} (mu in (0.5, 1) separates signal from noise)")
        super().__init__(params, {"lr": lr, "c": c, "mu": mu})

    @staticmethod
    def threshold(lr: float, c: float, mu: float, step: int) -> float:
        """l1(step) at a constant learning rate ``lr``: ``c * sqrt(lr) * (lr * step) ** mu``."""
        return c * lr**0.5 * (lr * step) ** mu

    @staticmethod
    def threshold_increment(lr: float, c: float, mu: float, step: int) -> float:
        """l1(step) - l1(step - 1) at learning rate ``lr`` (``threshold``'s difference, with c * sqrt(lr) factored)."""
        return c * lr**0.5 * ((lr * step) ** mu - (lr * (step - 1)) ** mu)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - the Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, mu = group["lr"], group["c"], group["mu"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["accumulator"] = p.detach().clone()
                    state["l1"] = 0.0
                state["step"] += 1
                state["accumulator"].add_(p.grad, alpha=-lr)
                state["l1"] += self.threshold_increment(lr, c, mu, state["step"])
                acc = state["accumulator"]
                p.copy_(acc.sign() * (acc.abs() - state["l1"]).clamp_min(0))
        return loss
