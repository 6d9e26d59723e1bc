"""Fit and evaluate: Adam, early stopping on validation AUC, learning-rate decay on plateau, resumable.

The loop knows nothing of files or trackers. ``tasks/`` passes callbacks that log metrics and write
checkpoints; ``Trainer.state_dict()`` holds everything a stopped run needs to go on exactly where it
stopped (weights, optimizer, best weights so far, patience counters, history). Each epoch's shuffle and
dropout are seeded from ``(seed, epoch)``, so a resumed run ends where an uninterrupted one ends.
A trainer also stops MKL from changing its thread count at run time (``fix_mkl_threads``) and keeps freed
memory in the process for the next batch (``keep_freed_memory``).
"""

from __future__ import annotations

import ctypes
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from aim.data import CTRData
from aim.models.base import adam
from aim.search.grda import GRDA


def fix_mkl_threads() -> bool:
    """Turn MKL's dynamic thread count off (``mkl_set_dynamic(0)``, as ``MKL_DYNAMIC=FALSE`` does).

    With it on, MKL may run a product on fewer threads than it has when it sees fit, and a product split
    over one thread and over two sums in another order: the last digits differ, and training amplifies
    them (one thread gives other gates than two on the same config here). Intel names a fixed thread count
    with MKL_DYNAMIC and OMP_DYNAMIC false as the condition for run-to-run reproducible results. Returns
    whether MKL was found (builds without it, e.g. on ARM, have nothing to fix).
    """
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"  # it links MKL statically, and exports it
    try:
        mkl = ctypes.CDLL(str(library)).MKL_Set_Dynamic  # the C entry (mkl_set_dynamic is Fortran's, by pointer)
    except (OSError, AttributeError):
        return False
    mkl(ctypes.c_int(0))
    return True


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit (HEAP_MAX_SIZE / 2)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: blocks up to 32 MB come from the heap, whose top is never trimmed.

    Torch allocates every intermediate of a CPU training step afresh and frees it by the end of the step. By
    default glibc serves the larger ones with new mappings and hands a freed heap top back to the OS, so each step
    fills its [4096, 400] activations into new pages: a median 2,761 page faults per training step of a
    [400, 400, 400] MLP at batch 4096 here, 180 with this (``bench.page_faults``; the counts swing widely between
    runs), and a DeepFM step 15 % faster in alternating runs of the two settings (medians of 77-85 ms against
    82-112 ms per batch, four runs each).
    The cost: the process's memory stays at its high-water mark instead of shrinking between steps. It is a
    process-wide setting (like ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the environment, which
    do the same). Returns whether glibc's ``mallopt`` was found (other C libraries: nothing is changed).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 4096
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2  # epochs without a better validation AUC before stopping
    # Epochs that neither count toward patience nor decay the learning rate. A pair term starts near zero (the
    # embeddings' std is 1e-4), so on a small log the validation AUC can rise on the main effects, dip, and rise
    # again only once the interactions grow (docs/own_log.md): a plateau that patience 2 mistakes for the end.
    min_epochs: int = 0
    min_delta: float = 1e-5  # an AUC gain below this is no gain
    lr_decay: float = 0.1  # the learning rate is multiplied by this on each epoch without gain...
    min_lr: float = 1e-6  # ...but not below this
    # ...or on every lr_decay_patience-th epoch in a row without gain: 2 lets one dip pass at the full rate (a
    # model still learning fast can lose validation AUC for an epoch and regain it, docs/benchmarks.md "Seeds").
    lr_decay_patience: int = 1
    grad_clip: float | None = 10.0  # max gradient norm of the Adam-trained weights (not GRDA gates); None: off
    seed: int = 2024
    device: str = "auto"  # "auto" = CUDA when present, else CPU; or any torch device string
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast matmuls and attention to bfloat16
    eval_batch_size: int = 65536
    progress: bool = False  # a progress bar over each epoch's batches
    restore_best: bool = True  # end with the best epoch's weights; a search reads its gates from the last epoch


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    valid_auc: float
    valid_logloss: float
    lr: float
    seconds: float
    samples_per_second: float
    improved: bool


@dataclass
class FitResult:
    best_epoch: int
    best_valid_auc: float
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    train_samples_per_second: float
    history: list[EpochRecord] = field(default_factory=list)


class Callback(Protocol):
    """Anything with some of these methods; ``trainer.stop = True`` inside one ends the run after this epoch."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None: ...


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other torch device string as it is. A CUDA device on a
    machine without one is a ValueError that says so (torch's own is an AssertionError at the first tensor)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
        raise ValueError(f"device {device!r}: this machine has {build} (torch {torch.__version__}); use "
                         "device: auto, which takes CUDA when present")
    return resolved


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 products run on ``device``'s own instructions rather than an emulation far slower than fp32.

    CPU: oneDNN's bf16 path, which needs AVX-512 (BW, VL, DQ) or AVX2-VNNI-2; on an AVX2-only CPU (AMD Zen 3)
    torch takes a generic kernel, and a 4096x400 @ 400x400 product ran 57x slower in bf16 than in fp32
    (``python -m bench.train_throughput`` prints the two rates as its roofline). CUDA: compute capability 8.0+.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without the op: say nothing rather than guess
            return True
    return True


def autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def place(data: CTRData, device: torch.device) -> CTRData:
    """The whole dataset on ``device`` when it fits in half the free memory; else it stays where it is."""
    if device.type != "cuda":
        return data.to(device)
    size = sum(t.numel() * t.element_size() for t in (data.single, data.label, *data.multi))
    free, _ = torch.cuda.mem_get_info(device)
    return data.to(device) if size < free / 2 else data


@torch.no_grad()
def predict(
    model: nn.Module,
    data: CTRData,
    batch_size: int = 65536,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Click probabilities for every row of ``data``, in order (float64 numpy). On CPU it sets the process up as a
    ``Trainer`` does: MKL's thread count fixed (the same scores every run) and freed memory kept for the next batch
    (a fresh process scored ml-100k's 10,000 test rows in 43-51 ms with the retrained AIM and 46-50 with DeepFM without
    it, 39-43 and 37-38 with it; three runs each)."""
    device = device or next(model.parameters()).device
    if device.type == "cpu":
        fix_mkl_threads()
        keep_freed_memory()
    was_training = model.training
    model.eval()
    out = []
    with autocast(device, precision):
        for batch in data.batches(batch_size):
            out.append(model.predict(batch.to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.empty(0)


def metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC and logloss (scikit-learn). AUC is NaN when the labels hold one class only."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.clip(probabilities, 1e-7, 1 - 1e-7)
    auc = float(roc_auc_score(labels, probabilities)) if 0 < labels.sum() < len(labels) else math.nan
    return {"auc": auc, "logloss": float(log_loss(labels, probabilities, labels=[0, 1]))}


def evaluate(model: nn.Module, data: CTRData, batch_size: int = 65536, precision: str = "fp32") -> dict[str, float]:
    return metrics(data.label.cpu().numpy(), predict(model, data, batch_size, precision=precision))


class Trainer:
    """Trains one model; ``fit`` may be called on a fresh trainer or on one given a saved ``state_dict``."""

    def __init__(self, model: nn.Module, config: TrainConfig, callbacks: Sequence[Callback] = ()) -> None:
        self.config = config
        fix_mkl_threads()
        keep_freed_memory()
        self.device = resolve_device(config.device)
        if config.precision == "bf16" and not bf16_is_native(self.device):
            where = "this CPU" if self.device.type == "cpu" else f"device {self.device}"
            warnings.warn(f"precision bf16: {where} has no native bf16 products, so torch emulates them, many times "
                          "slower than fp32 (57x for a 4096x400 @ 400x400 product on an AVX2-only AMD Zen 3); "
                          "precision fp32 (params.yaml: train.precision) will be faster", RuntimeWarning, stacklevel=2)
        self.model = model.to(self.device)
        self.callbacks = list(callbacks)
        # A model that searches gates says which optimizer trains what (GRDA for gates, Adam for the rest).
        if hasattr(model, "optimizers"):
            self.optimizers = model.optimizers(config.lr, config.weight_decay)
        else:
            self.optimizers = [adam(model.parameters(), config.lr, config.weight_decay)]
        # Clipping bounds the Adam-trained weights' gradient norm. Gates under GRDA are left out: their threshold
        # l1(t) is set against the raw gradients they accumulate, and a large MLP gradient must not shrink them.
        self.clipped = [p for o in self.optimizers if not isinstance(o, GRDA)
                        for group in o.param_groups for p in group["params"]]
        self.epoch = 0  # epochs completed
        self.best_auc = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.history: list[EpochRecord] = []
        self.stop = False
        self.train_seconds = 0.0
        self.samples_seen = 0

    # -- resumable state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "epoch": self.epoch,
            "best_auc": self.best_auc,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "history": [asdict(r) for r in self.history],
            "train_seconds": self.train_seconds,
            "samples_seen": self.samples_seen,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.epoch, self.best_auc, self.best_epoch = state["epoch"], state["best_auc"], state["best_epoch"]
        self.best_state, self.bad_epochs = state["best_state"], state["bad_epochs"]
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.train_seconds, self.samples_seen = state["train_seconds"], state["samples_seen"]

    # -- the loop --------------------------------------------------------------------------------------
    def fit(self, train: CTRData, valid: CTRData) -> FitResult:
        cfg = self.config
        if len(train) == 0 or len(valid) == 0:
            raise ValueError(f"empty split: train has {len(train)} rows, valid {len(valid)}")
        positives = int(valid.label.sum())
        if positives in (0, len(valid)):  # early stopping and best weights follow a validation AUC
            raise ValueError(f"the validation split holds one class only (all {len(valid)} rows labelled "
                             f"{int(positives > 0)}): its AUC is undefined, so early stopping cannot work; "
                             f"use a larger validation fraction or a split with both labels")
        train, valid = place(train, self.device), place(valid, self.device)
        self.stop = False
        while self.epoch < cfg.epochs and not self.stop and self.bad_epochs < cfg.patience:
            record = self._epoch(train, valid)
            self.history.append(record)
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(self, record)
        if cfg.restore_best and self.best_state is not None:  # keep the best weights, not the last
            self.model.load_state_dict(self.best_state)
        return FitResult(
            best_epoch=self.best_epoch,
            best_valid_auc=self.best_auc,
            epochs_run=self.epoch,
            stopped_early=self.bad_epochs >= cfg.patience,
            train_seconds=self.train_seconds,
            train_samples_per_second=self.samples_seen / max(self.train_seconds, 1e-9),
            history=list(self.history),
        )

    def _epoch(self, train: CTRData, valid: CTRData) -> EpochRecord:
        cfg, model = self.config, self.model
        # Seeds from (seed, epoch): a resumed run draws the same shuffles and dropout masks.
        torch.manual_seed(cfg.seed * 1_000_003 + self.epoch)
        shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
        model.train()
        batches = train.batches(cfg.batch_size, shuffle=True, generator=shuffle)
        if cfg.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=math.ceil(len(train) / cfg.batch_size), desc=f"epoch {self.epoch + 1}",
                           leave=False)
        start = time.perf_counter()
        total_loss = torch.zeros((), device=self.device)
        for batch in batches:
            batch = batch.to(self.device)
            with autocast(self.device, cfg.precision):
                logits = model(batch)
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
            objective = loss + model.regularization() if hasattr(model, "regularization") else loss
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.clipped, cfg.grad_clip)
            for optimizer in self.optimizers:
                optimizer.step()
            total_loss += loss.detach() * len(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        self.samples_seen += len(train)
        self.epoch += 1

        scores = evaluate(model, valid, cfg.eval_batch_size, cfg.precision)
        improved = scores["auc"] > self.best_auc + cfg.min_delta
        if improved:
            self.best_auc, self.best_epoch, self.bad_epochs = scores["auc"], self.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif self.epoch > cfg.min_epochs:
            self.bad_epochs += 1
            if self.bad_epochs % cfg.lr_decay_patience == 0:
                for optimizer in self.optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = max(group["lr"] * cfg.lr_decay, cfg.min_lr)
        return EpochRecord(
            epoch=self.epoch,
            train_loss=float(total_loss) / len(train),
            valid_auc=scores["auc"],
            valid_logloss=scores["logloss"],
            lr=self.optimizers[0].param_groups[0]["lr"],
            seconds=seconds,
            samples_per_second=len(train) / seconds,
            improved=improved,
        )


def fit(
    model: nn.Module, train: CTRData, valid: CTRData, config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` in place (ending with its best weights) and return what happened."""
    return Trainer(model, config or TrainConfig(), callbacks).fit(train, valid)


__all__ = [
    "Callback", "EpochRecord", "FitResult", "TrainConfig", "Trainer", "evaluate", "fit", "metrics",
    "predict", "resolve_device",
]
