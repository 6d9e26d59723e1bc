"""Benchmark: training samples/s of our CTR models beside DeepCTR-Torch's, against the machine's matmul roofline.

    python -m bench.train_throughput [--epochs 3] [--batch-size 4096] [--models fm,fwfm,afm,ifm,deepfm,autoint_plus]
                                     [--repeats 3] [--quick] [--no-bf16] [--no-peer] [--threads N]
                                     [--out bench/results/train_throughput.json]

1. Data: the Frappe CTR set, built by our own stages (tasks.ingest.run, tasks.encode.run; random 70/20/10 split,
   min_count 1) in a temp working directory, loaded with tasks.training.load_encoded(). Nothing enters the
   repository. Both sides get the same integer codes (DeepCTR-Torch: one SparseFeat per field, vocabulary_size =
   our vocab_size, the same embedding_dim).
2. Roofline: the FLOP/s of a dense 4096x400 @ 400x400 product (the shape of one hidden layer of a [400, 400, 400]
   MLP at batch 4096), float32 and bfloat16, best of several timed repeats, at the same thread count.
3. Ours: aim.models.build_model + aim.train.Trainer(...).fit(train, valid); samples/s = FitResult's
   train_samples_per_second (wall time of the training epochs only; the per-epoch validation is excluded).
4. Peer: DeepCTR-Torch's counterpart, model.fit(x, y, batch_size, epochs=1, verbose=0) once per epoch; samples/s =
   rows x epochs / the summed wall time of those fit calls (training only; the validation between epochs runs
   outside the clock). Both sides keep the weights of the epoch with the best validation AUC (our Trainer's rule,
   applied to the peer by hand) and report test AUC / logloss with the same function (aim.train.metrics).
5. Optional bf16 comparison (on by default, --no-bf16 skips it): our DeepFM and AutoInt+ again with
   TrainConfig(precision="bf16"), speed ratio and test-AUC difference against the fp32 runs.
6. Rounds (--repeats, default 3): each model trains ours, then its peer (then ours in bf16), that many times in
   turn. A row's samples/s is its median run; a ratio (ours / peer, bf16 / fp32) is the median of the ratios within
   a round, so that both sides of a ratio see the same state of the machine. On a shared 2-core VM the same run
   moved by 1.5x between runs (AFM: 104k, 150k and 166k samples/s in three runs of one code), more than most of
   the changes it is meant to measure.
7. Prints a table and met/missed per target (computed, never asserted); writes everything as JSON to --out.

Same settings on both sides (CONFIG below): embedding_dim 10, batch 4096, Adam lr 1e-3, no L2 anywhere, no
gradient clipping, no learning-rate decay, no early stop (patience > epochs), torch.manual_seed(SEED) before each
model is built, per-epoch shuffles seeded from (SEED, epoch); both run in this one process, at torch's default
thread count (--threads N sets another, for both). Before each timed run, WARMUP_BATCHES untimed steps train a
copy of the model (both sides), so one-time costs stay out of the clock. The AUC after a few epochs is not a
converged AUC: it shows that both sides learn, no more.

Run it on a quiet machine: CPU use by other processes is sampled before each model and flagged (> 10 %). With
torch's threads on every core and another process on one of them, each parallel region waits for a descheduled
thread, and the small per-batch kernels of these models run many times slower (seen on a busy 2-core machine: FM
at 15k samples/s with 2 threads, 500k with 1).

The peer is optional: `pip install -e ".[bench]"` (with torch already pinned, as the Makefile does) adds
deepctr-torch >= 0.3.0, which requires torch >= 2.4, tqdm and scikit-learn and so keeps our torch==2.13.0 CPU
(0.2.9 and older declare a `tensorflow` requirement). Two shims, both here, none in the package: its import starts
a thread that asks PyPI for a newer version (disabled for the import: no network call from a benchmark), and its
fit() prints the device and a line per call (silenced). Without deepctr-torch, our side and the roofline still run
and the peer columns say "skipped".

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aim.layers.native import pair_kernel
from aim.train import bf16_is_native

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "train_throughput.json"
SEED = 2024
EMBEDDING_DIM, LR = 10, 1e-3
MLP = {"hidden_units": [400, 400, 400], "dropout": 0.2, "batch_norm": True}  # DeepFM's and AutoInt+'s MLP
ATTENTION = {"attention_layers": 3, "num_heads": 2}  # AutoInt+: head_dim 5, attention_dim = embedding_dim
AFM_ATTENTION_DIM = 16
ALL_MODELS = ("fm", "fwfm", "afm", "ifm", "deepfm", "autoint_plus")
WITHOUT_BIG_MLP = ("fm", "fwfm", "afm", "ifm")
WITH_MLP = ("deepfm", "autoint_plus")
TARGET_PEER_RATIO, TARGET_ROOFLINE, TARGET_BF16_SPEEDUP, TARGET_BF16_AUC = 5.0, 0.80, 1.5, 0.0005
QUICK_ROWS = {"train": 20_000, "valid": 5_000, "test": 5_000}
WARMUP_BATCHES = 3  # untimed training steps on a copy of each model before its timed run (both sides)
BUSY_WARNING = 10.0  # % CPU in use by others before a run above which the figures are flagged
ROOFLINE_SHAPE = (4096, 400, 400)  # (m, k, n): [m, k] @ [k, n]

# Our hyper-parameters per model (passed to build_model with embedding_dim) and the DeepCTR-Torch model that is
# its peer, with that model's arguments; `like_for_like` is False where the peer is only the nearest model.
CONFIG: dict[str, dict[str, Any]] = {
    "fm": {"ours": {}, "peer": "fm", "like_for_like": True},
    "fwfm": {"ours": {}, "peer": "fm", "like_for_like": False,
             "note": "DeepCTR-Torch has no FwFM; its nearest model, FM (DeepFM without DNN), is the peer"},
    "afm": {"ours": {"attention_dim": AFM_ATTENTION_DIM, "dropout": 0.0, "attention_l2": 0.0}, "peer": "afm",
            "like_for_like": True},
    "ifm": {"ours": {"attention_dim": AFM_ATTENTION_DIM, "dropout": 0.0}, "peer": "afm", "like_for_like": False,
            "note": "DeepCTR-Torch's IFM is the Input-aware FM (Yu et al., IJCAI 2019: an MLP reweights the "
                    "fields), not the Interaction-aware FM (Hong et al., AAAI 2019) that ours is; the peer is "
                    "AFM, the nearest (attention over the field pairs). Its IFM is still timed, as an extra row"},
    "deepfm": {"ours": dict(MLP), "peer": "deepfm", "like_for_like": True},
    "autoint_plus": {"ours": {**ATTENTION, "attention_dim": EMBEDDING_DIM, "use_residual": True, "use_scale": False,
                              "layer_norm": False, **MLP},
                     "peer": "autoint_plus", "like_for_like": True,
                     "note": "DeepCTR-Torch's InteractingLayer keeps the embedding width (attention_dim = "
                             "embedding_dim), has no scaling or LayerNorm in AutoInt, and adds the first-order "
                             "term; ours is set to match (3 layers, 2 heads, unscaled, no LayerNorm)"},
}
PEER_EXTRA = {"ifm": "ifm_input_aware"}  # our model -> an additional peer row run for information only
PEER_ARGS: dict[str, tuple[str, dict[str, Any]]] = {
    "fm": ("DeepFM", {"use_fm": True, "dnn_hidden_units": ()}),
    "afm": ("AFM", {"use_attention": True, "attention_factor": AFM_ATTENTION_DIM, "l2_reg_att": 0.0,
                    "afm_dropout": 0.0}),
    "deepfm": ("DeepFM", {"use_fm": True, "dnn_hidden_units": tuple(MLP["hidden_units"]),
                          "dnn_dropout": MLP["dropout"], "dnn_use_bn": MLP["batch_norm"], "l2_reg_dnn": 0.0}),
    "autoint_plus": ("AutoInt", {"att_layer_num": ATTENTION["attention_layers"],
                                 "att_head_num": ATTENTION["num_heads"], "att_res": True,
                                 "dnn_hidden_units": tuple(MLP["hidden_units"]), "dnn_dropout": MLP["dropout"],
                                 "dnn_use_bn": MLP["batch_norm"], "l2_reg_dnn": 0.0}),
    "ifm_input_aware": ("IFM", {"dnn_hidden_units": (256, 128), "l2_reg_dnn": 0.0}),  # its default factor net
}
_T0 = time.perf_counter()


def log(msg: str) -> None:
    """One progress line on stderr, with seconds since start."""
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """CPU model and flags that matter for matmuls, cores, library versions, torch's thread counts."""
    model, flags = "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    import sklearn

    return {"cpu_model": model, "cpu_flags": [f for f in wanted if f in flags], "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "mkldnn": torch.backends.mkldnn.is_available(),
            "numpy": np.__version__, "scikit_learn": sklearn.__version__, "python": platform.python_version(),
            "platform": platform.platform(),
            # AFM's and IFM's pair term: the C++ kernel (aim/layers/native.py) or, with AIM_NATIVE=0, torch ops
            "native_pair_kernel": pair_kernel() is not None}


def cpu_busy(seconds: float = 0.5) -> float:
    """System-wide CPU use (%) over ``seconds``: other work on the cores makes the figures low."""
    import psutil

    return float(psutil.cpu_percent(interval=seconds))


def warn_if_busy(percent: float) -> None:
    """Say so when other work holds the cores: with torch's threads on every core, each parallel region then
    waits for a descheduled thread, and small-batch training can run many times slower than on a quiet machine."""
    if percent > BUSY_WARNING:
        log(f"WARNING: the CPUs are {percent:.0f}% busy with other work: figures will be low and noisy "
            f"(rerun on a quiet machine)")


def matmul_rate(dtype: torch.dtype, repeats: int = 7, target_seconds: float = 0.1) -> dict[str, Any]:
    """FLOP/s of [m, k] @ [k, n] (ROOFLINE_SHAPE) in ``dtype``: best (and median) of ``repeats`` timed runs."""
    m, k, n = ROOFLINE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(3):  # warm-up: kernel selection, page faults
        torch.mm(a, b, out=out)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    per_product = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, min(1000, int(target_seconds / per_product)))
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        seconds.append((time.perf_counter() - t0) / inner)
    flop = 2.0 * m * k * n
    return {"dtype": str(dtype).removeprefix("torch."), "shape": f"{m}x{k} @ {k}x{n}", "flop_per_product": flop,
            "products_per_repeat": inner, "repeats": repeats, "best_flops": flop / min(seconds),
            "median_flops": flop / float(np.median(seconds))}


# ------------------------------------------------------------------------------------------- FLOPs
def flops_per_sample(name: str, num_fields: int) -> dict[str, Any] | None:
    """Dense-product FLOPs per training sample of DeepFM / AutoInt+ in CONFIG (None for the other models).

    Forward: 2·in·out per Linear (MLP layers and output; AutoInt+: the Q/K/V and residual projections, 2·n·in·out
    each) plus the attention products Q·Kᵀ and A·V (2·n²·head_dim per head each). Forward + backward = 3 x forward
    (backward = grad of the inputs + grad of the weights, each a product of the forward's size). Embedding gathers,
    the FM term, batch norm, softmax and the optimizer step are not counted (O(n·d) or O(params) per sample).
    """
    if name not in WITH_MLP:
        return None
    d = EMBEDDING_DIM
    widths = [num_fields * d, *MLP["hidden_units"], 1]
    parts = {"mlp": sum(2 * a * b for a, b in zip(widths, widths[1:], strict=False))}
    if name == "autoint_plus":
        layers, width = ATTENTION["attention_layers"], d  # attention_dim = embedding_dim (CONFIG)
        parts["attention_projections"] = layers * num_fields * 2 * (d * 3 * width + d * width)  # QKV + residual
        parts["attention_products"] = layers * 2 * (2 * num_fields * num_fields * width)  # QKᵀ and A·V, all heads
        parts["attention_output"] = 2 * num_fields * width
    forward = sum(parts.values())
    return {"forward": forward, "forward_backward": 3 * forward, "parts_forward": parts,
            "how": "dense products only; forward: 2*in*out per Linear, 2*n^2*head_dim per head for QK^T and A*V; "
                   "forward+backward = 3 x forward"}


def counted_flops(model: torch.nn.Module, batch: Any) -> float | None:
    """Cross-check: torch.utils.flop_counter's count of one forward+backward, per sample (it does not see CPU
    scaled_dot_product_attention, so AutoInt+'s Q·Kᵀ and A·V are missing from it)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(batch).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(batch)


# ---------------------------------------------------------------------------------------------- data
def build_frappe(workdir: Path) -> tuple[list[Any], dict[str, Any]]:
    """Ingest + encode Frappe in ``workdir`` (our stages, random 70/20/10 split, min_count 1); the tensors."""
    from tasks import encode, ingest
    from tasks.training import load_encoded
    from tests.conftest import project_params

    params = project_params("frappe", encode={"split": {"method": "random", "fractions": [0.7, 0.2, 0.1]},
                                              "min_count": 1})
    old = Path.cwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the stages' summary lines become progress lines
            ingest.run(params)
            encode.run(params)
        return load_encoded()
    finally:
        os.chdir(old)


def subsample(data: dict[str, Any], rows: dict[str, int]) -> dict[str, Any]:
    """The first ``rows[split]`` rows of a seeded shuffle of each split (for --quick)."""
    out = {}
    for split, part in data.items():
        perm = torch.randperm(len(part), generator=torch.Generator().manual_seed(SEED))[: rows[split]]
        out[split] = part.take(perm.sort().values)
    return out


def spread(part: Any, rows: int) -> Any:
    """``rows`` rows drawn across the split (seeded): a leading slice of a log can hold one label only, and a
    validation split of one label is refused (its AUC is undefined)."""
    return part.take(torch.randperm(len(part), generator=torch.Generator().manual_seed(SEED))[:rows].sort().values)


# ---------------------------------------------------------------------------------------------- ours
def run_ours(name: str, fields: list[Any], data: dict[str, Any], epochs: int, batch_size: int,
             precision: str = "fp32") -> dict[str, Any]:
    """Train our model ``name``; samples/s of the training epochs, test AUC / logloss of the best epoch."""
    from aim.models import build_model
    from aim.train import TrainConfig, Trainer, evaluate

    torch.manual_seed(SEED)
    model = build_model(name, fields, embedding_dim=EMBEDDING_DIM, **CONFIG[name]["ours"])
    # Warm-up on a copy (thread pool, allocator, kernel choice); the Trainer reseeds every epoch, so the run
    # below is the same with or without it.
    rows = min(len(data["train"]), WARMUP_BATCHES * batch_size)
    Trainer(copy.deepcopy(model), TrainConfig(epochs=1, batch_size=batch_size, lr=LR, grad_clip=None, device="cpu",
                                              precision=precision)).fit(  # type: ignore[arg-type]
        data["train"].slice(0, rows), spread(data["valid"], batch_size))
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=LR, patience=epochs + 1, lr_decay=1.0,
                         grad_clip=None, seed=SEED, device="cpu", precision=precision)  # type: ignore[arg-type]
    result = Trainer(model, config).fit(data["train"], data["valid"])
    scores = evaluate(model, data["test"], precision=precision)
    row = {"side": "ours", "model": name, "precision": precision, "samples_per_second": result.train_samples_per_second,
           "train_seconds": result.train_seconds, "epochs": result.epochs_run,
           "epoch_samples_per_second": [r.samples_per_second for r in result.history],
           "best_epoch": result.best_epoch, "valid_auc": result.best_valid_auc, "test_auc": scores["auc"],
           "test_logloss": scores["logloss"], "params": sum(p.numel() for p in model.parameters()),
           "hyperparameters": {"embedding_dim": EMBEDDING_DIM, **CONFIG[name]["ours"]}}
    if name in WITH_MLP and precision == "fp32":
        row["flops_counted_by_torch"] = counted_flops(model, data["train"].slice(0, 256))
    return row


# ---------------------------------------------------------------------------------------------- peer
def import_peer() -> tuple[Any | None, str]:
    """deepctr_torch, or None and why not. Its import would ask PyPI for a newer version in a thread: that
    call is made to fail at once (requests.get patched for the import) and the thread is joined."""
    try:
        import requests
    except ImportError:
        requests = None  # deepctr_torch imports requests itself; its ImportError is reported below
    before = set(threading.enumerate())
    real_get = getattr(requests, "get", None)

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("bench: DeepCTR-Torch's version check is disabled")

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if requests is not None:
                requests.get = no_network
            try:
                import deepctr_torch
                import deepctr_torch.models  # noqa: F401
            finally:
                for thread in set(threading.enumerate()) - before:
                    thread.join(10)
                if requests is not None:
                    requests.get = real_get
    except ImportError as err:
        return None, f"deepctr-torch not importable ({err}); install the bench extra: pip install -e '.[bench]'"
    return deepctr_torch, f"deepctr-torch {deepctr_torch.__version__}"


def peer_inputs(part: Any, fields: list[Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Our CTRData as DeepCTR-Torch's input: {field name: int32 codes [N]}, float32 labels [N]."""
    codes = part.single.numpy()
    return ({f.name: np.ascontiguousarray(codes[:, j]) for j, f in enumerate(fields)},
            part.label.numpy().astype(np.float32))


def run_peer(dctr: Any, key: str, fields: list[Any], data: dict[str, Any], epochs: int, batch_size: int,
             ) -> dict[str, Any]:
    """Train DeepCTR-Torch's model ``key`` (PEER_ARGS) one fit() call per epoch; timed like ours."""
    from deepctr_torch.inputs import SparseFeat

    from aim.train import metrics

    if any(f.multi_valued for f in fields):
        raise ValueError("the peer is fed single-valued fields only")
    columns = [SparseFeat(f.name, vocabulary_size=f.vocab_size, embedding_dim=EMBEDDING_DIM) for f in fields]
    cls_name, args = PEER_ARGS[key]
    cls = getattr(dctr.models, cls_name)
    torch.manual_seed(SEED)
    l2 = {"l2_reg_embedding": 0.0} | ({} if cls_name == "AutoInt" else {"l2_reg_linear": 0.0})
    model = cls(columns, columns, **args, **l2, init_std=1e-4, seed=SEED, task="binary", device="cpu")
    x, y = peer_inputs(data["train"], fields)
    twin, rows = copy.deepcopy(model), min(len(y), WARMUP_BATCHES * batch_size)  # warm-up on a copy, as ours
    twin.compile(torch.optim.Adam(twin.parameters(), lr=LR), "binary_crossentropy")
    with contextlib.redirect_stdout(io.StringIO()):
        twin.fit({k: v[:rows] for k, v in x.items()}, y[:rows], batch_size=batch_size, epochs=1, verbose=0)
    twin.predict({k: v[:batch_size] for k, v in x.items()}, batch_size=65536)
    del twin
    model.compile(torch.optim.Adam(model.parameters(), lr=LR), "binary_crossentropy")
    x_valid, y_valid = peer_inputs(data["valid"], fields)
    x_test, y_test = peer_inputs(data["test"], fields)
    seconds, per_epoch, best_auc, best_epoch, best_state = [], [], -math.inf, 0, None
    for epoch in range(epochs):
        torch.manual_seed(SEED * 1_000_003 + epoch)  # its DataLoader shuffles with torch's global RNG
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # fit() prints the device and a summary line
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        seconds.append(time.perf_counter() - t0)
        per_epoch.append(len(y) / seconds[-1])
        auc = metrics(y_valid, model.predict(x_valid, batch_size=65536).ravel())["auc"]  # outside the clock
        if auc > best_auc:
            best_auc, best_epoch, best_state = auc, epoch + 1, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    scores = metrics(y_test, model.predict(x_test, batch_size=65536).ravel())
    return {"side": "deepctr-torch", "model": key, "class": f"deepctr_torch.models.{cls_name}", "precision": "fp32",
            "samples_per_second": len(y) * epochs / sum(seconds), "train_seconds": sum(seconds), "epochs": epochs,
            "epoch_samples_per_second": per_epoch, "best_epoch": best_epoch, "valid_auc": best_auc,
            "test_auc": scores["auc"], "test_logloss": scores["logloss"],
            "params": sum(p.numel() for p in model.parameters()),
            "hyperparameters": {"embedding_dim": EMBEDDING_DIM, **{k: list(v) if isinstance(v, tuple) else v
                                                                   for k, v in (args | l2).items()}}}


# -------------------------------------------------------------------------------------------- report
def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median samples/s (the lower middle one of an even count), with every run's samples/s."""
    ordered = sorted(runs, key=lambda r: r["samples_per_second"])
    return {**ordered[(len(ordered) - 1) // 2], "samples_per_second_per_round": [r["samples_per_second"] for r in runs]}


def evaluate_targets(models: list[str], ours: dict[str, dict[str, Any]], bf16: dict[str, dict[str, Any]],
                     roofline: dict[str, Any], bf16_skipped: str | None = None) -> list[dict[str, Any]]:
    """Met / missed per target, from the measured figures (n/a where a side was not run, ``bf16_skipped`` saying
    why the bf16 runs were not)."""
    targets = []
    for name in (m for m in models if m in WITHOUT_BIG_MLP):
        peer_key = CONFIG[name]["peer"]
        ratio = ours[name].get("vs_peer")  # None where the peer did not run
        nearest = "" if CONFIG[name]["like_for_like"] else " (nearest)"
        targets.append({"target": f"{name}: >= {TARGET_PEER_RATIO:g}x peer samples/s",
                        "peer": f"deepctr {peer_key}{nearest}", "measured": ratio, "shown": _x(ratio),
                        "result": "n/a" if ratio is None else _met(ratio >= TARGET_PEER_RATIO)})
    for name in (m for m in models if m in WITH_MLP):
        fraction = ours[name].get("roofline_fraction_fp32")
        targets.append({"target": f"{name}: >= {TARGET_ROOFLINE:.0%} of fp32 roofline",
                        "measured": fraction, "shown": f"{fraction:.1%}" if fraction is not None else "n/a",
                        "roofline_flops": roofline["fp32"]["best_flops"],
                        "result": "n/a" if fraction is None else _met(fraction >= TARGET_ROOFLINE)})
    for name, b in bf16.items():
        speed, diff = b["speedup_bf16_over_fp32"], b["test_auc_bf16_minus_fp32"]
        ok = speed >= TARGET_BF16_SPEEDUP and abs(diff) <= TARGET_BF16_AUC
        targets.append({"target": f"{name}: bf16 >= {TARGET_BF16_SPEEDUP:g}x fp32, |dAUC| <= {TARGET_BF16_AUC}",
                        "measured": {"speedup": speed, "auc_diff": diff},
                        "shown": f"{speed:.2f}x, dAUC {diff:+.4f}", "result": _met(ok)})
    if bf16_skipped:
        targets += [{"target": f"{name}: bf16 >= {TARGET_BF16_SPEEDUP:g}x fp32, |dAUC| <= {TARGET_BF16_AUC}",
                     "measured": None, "shown": f"skipped: {bf16_skipped}", "result": "n/a"}
                    for name in models if name in WITH_MLP and name not in bf16]
    return targets


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "n/a"


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(rows: list[dict[str, Any]], roofline: dict[str, Any], targets: list[dict[str, Any]],
                 peer_note: str, data_rows: dict[str, int], epochs: int, batch_size: int) -> None:
    """The results table, the roofline and the targets."""
    print(f"\nFrappe: train {data_rows['train']:,} / valid {data_rows['valid']:,} / test {data_rows['test']:,} rows; "
          f"{epochs} epoch(s), batch {batch_size}, embedding_dim {EMBEDDING_DIM}; {torch.get_num_threads()} threads")
    for dtype, r in roofline.items():
        print(f"roofline {dtype}: {r['shape']}  best {r['best_flops'] / 1e9:.1f} GFLOP/s  "
              f"(median {r['median_flops'] / 1e9:.1f})")
    print(f"peer: {peer_note}")
    print(f"\n{'model':<20}{'side':<15}{'prec':<6}{'samples/s':>12}{'vs peer':>9}{'test AUC':>10}{'logloss':>9}"
          f"{'params':>10}{'MFLOP/smp':>11}{'roofline':>10}")
    for r in rows:
        vs = _x(r["vs_peer"]) if r.get("vs_peer") is not None else ""
        fl = f"{r['flops_per_sample'] / 1e6:.2f}" if r.get("flops_per_sample") else ""
        frac = f"{r['roofline_fraction']:.1%}" if r.get("roofline_fraction") is not None else ""
        print(f"{r['label']:<20}{r['side']:<15}{r['precision']:<6}{r['samples_per_second']:>12,.0f}{vs:>9}"
              f"{r['test_auc']:>10.4f}{r['test_logloss']:>9.4f}{r['params']:>10,}{fl:>11}{frac:>10}")
    print(f"\n{'target':<52}{'measured':>24}  result")
    for t in targets:
        peer = f" vs {t['peer']}" if "peer" in t else ""
        print(f"{t['target'] + peer:<52}{t['shown']:>24}  {t['result']}")


# ---------------------------------------------------------------------------------------------- main
@contextlib.contextmanager
def temp_workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aim-bench-train-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per model (default 3; --quick: 1)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--models", default=",".join(ALL_MODELS), help=f"comma-separated, of {', '.join(ALL_MODELS)}")
    ap.add_argument("--quick", action="store_true",
                    help=f"a subsample ({QUICK_ROWS['train']:,} train rows) and 1 epoch: checks that it works")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 vs fp32 comparison")
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="skip DeepCTR-Torch even if installed")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for both sides (default: torch's default, the machine's cores)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds per model, each ours then its peer (and bf16): samples/s are the median run, "
                         "ratios the median of the per-round ratios (default 3; --quick: 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(ALL_MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(ALL_MODELS)}")
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 3)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if str(ROOT) not in sys.path:  # tasks.* and tests.conftest from the repository
        sys.path.insert(0, str(ROOT))
    command = shlex.join(["python", "-m", "bench.train_throughput", *(sys.argv[1:] if argv is None else argv)])

    machine = machine_info()
    machine["threads_set_by"] = "--threads" if args.threads is not None else "torch default"
    busy: dict[str, float] = {"start": cpu_busy(1.0)}
    log(f"{machine['cpu_model']}, {machine['cpus']} CPUs, torch {machine['torch']}, "
        f"{machine['torch_threads']} threads; CPU busy before: {busy['start']:.0f}%")
    warn_if_busy(busy["start"])
    machine["native_bf16"] = bf16_is_native(torch.device("cpu"))
    bf16_skipped = None if args.bf16 else "--no-bf16"
    if args.bf16 and not machine["native_bf16"]:
        bf16_skipped = "this CPU has no native bf16 products"
        # An AVX2-only CPU emulates bf16 (57x slower than fp32 for the roofline's product on a Zen 3): the runs
        # would measure the emulation, for hours, so the comparison is left out and the report says why.
        args.bf16 = False
        log("bf16: SKIPPED, this CPU has no native bf16 products (oneDNN needs AVX-512 or AVX2-VNNI-2)")
    dctr, peer_note = import_peer() if args.peer else (None, "skipped (--no-peer)")
    peer_note += "" if dctr else " -- the peer is SKIPPED"
    log(f"peer: {peer_note}")
    if dctr is not None:
        machine["deepctr_torch"] = dctr.__version__

    with temp_workdir() as tmp:
        log(f"data: building Frappe with tasks.ingest + tasks.encode in {tmp}")
        fields, data = build_frappe(tmp)
    if args.quick:
        data = subsample(data, QUICK_ROWS)
    data_rows = {s: len(d) for s, d in data.items()}
    log(f"data: {len(fields)} fields, rows {data_rows}" + (" (--quick subsample)" if args.quick else ""))

    log("roofline: timing the dense products ...")
    roofline = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    for dtype, r in roofline.items():
        log(f"roofline {dtype}: {r['best_flops'] / 1e9:.1f} GFLOP/s (best of {r['repeats']})")

    ours: dict[str, dict[str, Any]] = {}
    peers: dict[str, dict[str, Any]] = {}  # each peer as first measured (fm serves fm and fwfm, afm afm and ifm)
    peers_by_model: dict[str, dict[str, dict[str, Any]]] = {}  # each model's own rounds of its peers
    bf16: dict[str, dict[str, Any]] = {}
    for name in models:
        busy[name] = cpu_busy()
        log(f"{name}: {args.repeats} round(s) of ours, then its peer(s) [CPU busy before: {busy[name]:.0f}%]")
        warn_if_busy(busy[name])
        keys = [k for k in (CONFIG[name]["peer"], PEER_EXTRA.get(name)) if k is not None] if dctr is not None else []
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bf16": [], **{k: [] for k in keys}}
        for round_ in range(1, args.repeats + 1):
            # Each round runs both sides back to back, so a ratio within a round sees one state of the machine.
            runs["ours"].append(run_ours(name, fields, data, epochs, args.batch_size))
            log(f"{name} round {round_}: ours {runs['ours'][-1]['samples_per_second']:,.0f} samples/s, "
                f"test AUC {runs['ours'][-1]['test_auc']:.4f}")
            for key in keys:
                runs[key].append(run_peer(dctr, key, fields, data, epochs, args.batch_size))
                log(f"{name} round {round_}: peer {key} {runs[key][-1]['samples_per_second']:,.0f} samples/s, "
                    f"test AUC {runs[key][-1]['test_auc']:.4f}")
            if args.bf16 and name in WITH_MLP:
                runs["bf16"].append(run_ours(name, fields, data, epochs, args.batch_size, precision="bf16"))
                log(f"{name} round {round_}: bf16 {runs['bf16'][-1]['samples_per_second']:,.0f} samples/s "
                    f"({runs['bf16'][-1]['samples_per_second'] / runs['ours'][-1]['samples_per_second']:.2f}x fp32)")
        ours[name] = median_run(runs["ours"])
        peers_by_model[name] = {key: median_run(runs[key]) for key in keys}
        for key in keys:
            peers.setdefault(key, peers_by_model[name][key])
        peer_runs = runs.get(CONFIG[name]["peer"])
        if peer_runs:
            ours[name]["vs_peer_per_round"] = [a["samples_per_second"] / b["samples_per_second"]
                                               for a, b in zip(runs["ours"], peer_runs, strict=True)]
        if runs["bf16"]:
            speedups = [b["samples_per_second"] / a["samples_per_second"]
                        for a, b in zip(runs["ours"], runs["bf16"], strict=True)]
            b = median_run(runs["bf16"])
            bf16[name] = {**b, "speedup_bf16_over_fp32": float(np.median(speedups)),
                          "speedup_per_round": speedups,
                          "test_auc_bf16_minus_fp32": b["test_auc"] - ours[name]["test_auc"]}

    # FLOPs and roofline fractions (fp32 runs vs the fp32 roofline, bf16 runs vs the bf16 one)
    flops = {name: flops_per_sample(name, len(fields)) for name in models if name in WITH_MLP}
    for name, f in flops.items():
        if f is None:
            continue
        for run, dtype in [(ours[name], "fp32"), *([(bf16[name], "bf16")] if name in bf16 else [])]:
            achieved = run["samples_per_second"] * f["forward_backward"]
            run.update(flops_per_sample=f["forward_backward"], achieved_flops=achieved,
                       roofline_fraction=achieved / roofline[dtype]["best_flops"])
        ours[name]["roofline_fraction_fp32"] = ours[name]["roofline_fraction"]
        if name in bf16:
            bf16[name]["roofline_fraction_fp32"] = (bf16[name]["achieved_flops"] / roofline["fp32"]["best_flops"])
        peer = peers.get(CONFIG[name]["peer"])
        if peer is not None:  # the same dense products (same layer sizes)
            achieved = peer["samples_per_second"] * f["forward_backward"]
            peer.update(flops_per_sample=f["forward_backward"], achieved_flops=achieved,
                        roofline_fraction=achieved / roofline["fp32"]["best_flops"])

    rows: list[dict[str, Any]] = []
    for name in models:
        peer_key = CONFIG[name]["peer"]
        peer = peers_by_model[name].get(peer_key)
        ratio = float(np.median(ours[name]["vs_peer_per_round"])) if peer else None
        ours[name]["vs_peer"] = ratio
        ours[name]["peer"] = {"key": peer_key, "like_for_like": CONFIG[name]["like_for_like"],
                              "note": CONFIG[name].get("note")}
        rows.append({**ours[name], "label": name})
        if name in bf16:
            rows.append({**bf16[name], "label": name, "vs_peer": None})
        if peer is not None:
            rows.append({**peer, "label": f"  {peer_key}" + ("" if CONFIG[name]["like_for_like"] else " ~"),
                         "vs_peer": None})
        extra = PEER_EXTRA.get(name)
        if extra in peers_by_model[name]:
            rows.append({**peers_by_model[name][extra], "label": f"  {extra} ~", "vs_peer": None})

    targets = evaluate_targets(models, ours, bf16, roofline, bf16_skipped)
    print_report(rows, roofline, targets, peer_note, data_rows, epochs, args.batch_size)
    if dctr is not None:
        print("~ = not the same model: see 'peer_notes' in the JSON "
              "(fwfm and ifm are compared with the nearest DeepCTR-Torch model)")
    if args.quick:
        print("--quick: a small subsample and 1 epoch; the figures only show that the benchmark runs")
    if max(busy.values()) > BUSY_WARNING:
        print(f"WARNING: other work used up to {max(busy.values()):.0f}% of the CPUs before a run "
              "(cpu_busy_before_percent in the JSON): these figures are not a clean measurement")

    result = {
        "benchmark": "training throughput, Frappe CTR set: ours vs DeepCTR-Torch, matmul roofline",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "quick": args.quick,
        "clean": max(busy.values()) <= BUSY_WARNING,
        "machine": machine, "cpu_busy_before_percent": busy, "peer": peer_note,
        "data": {"dataset": "frappe", "rows": data_rows, "fields": [f.name for f in fields],
                 "vocab_sizes": {f.name: f.vocab_size for f in fields},
                 "encode": {"split": "random 0.7/0.2/0.1", "min_count": 1}},
        "settings": {"epochs": epochs, "batch_size": args.batch_size, "embedding_dim": EMBEDDING_DIM,
                     "optimizer": f"Adam lr {LR}", "l2": 0.0, "grad_clip": None, "lr_decay": None,
                     "early_stopping": None, "seed": SEED, "threads": torch.get_num_threads(),
                     "warmup_batches": WARMUP_BATCHES, "repeats": args.repeats,
                     "mlp": MLP, "autoint_attention": {**ATTENTION, "attention_dim": EMBEDDING_DIM,
                                                       "residual": True, "scaled": False, "layer_norm": False},
                     "afm_attention_dim": AFM_ATTENTION_DIM},
        "roofline": roofline, "flops_per_sample": flops, "ours": ours, "peers": peers,
        "peers_by_model": peers_by_model, "bf16": bf16,
        "targets": targets,
        "peer_notes": {name: CONFIG[name].get("note") for name in models if CONFIG[name].get("note")},
        "notes": "samples/s = training rows x epochs / wall seconds of the training epochs only: ours from "
                 "FitResult.train_samples_per_second (per-epoch validation excluded), the peer from the summed wall "
                 "time of one model.fit(epochs=1, verbose=0) call per epoch (its validation runs between the calls, "
                 "outside the clock; each call also rebuilds its TensorDataset/DataLoader, which is part of its fit). "
                 "Both sides keep the weights of the epoch with the best validation AUC and are scored on test with "
                 "aim.train.metrics; bf16 runs are evaluated under bf16 autocast. AUC after so few epochs is not "
                 "converged. FLOPs per sample: see flops_per_sample[*].how; flops_counted_by_torch (ours) is "
                 "torch.utils.flop_counter's count of one forward+backward (it misses CPU SDPA). roofline_fraction "
                 "= samples/s x FLOPs/sample / best dense matmul FLOP/s of the same dtype. Initialisation differs: "
                 "DeepCTR-Torch draws its MLP weights from N(0, 1e-4), ours uses torch's defaults.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
