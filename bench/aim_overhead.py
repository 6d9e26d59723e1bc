"""Benchmark: what AIM's search and its retrained model cost, as ratios against DeepFM in the same run.

    python -m bench.aim_overhead [--epochs 1] [--threads N] [--device auto] [--out bench/results/aim_overhead.json]

Reads what the pipeline wrote (run ``make run`` or ``dvc repro`` first): the encoded splits in data/encoded,
the searched gates in gates/interaction.json and gates/embed.json, and the settings in params.yaml. Every
model is built as its stage builds it, and trained by the same loop (aim.train.Trainer), in this one process:

1. Search overhead (AIM paper, section 4.2.3: a search epoch 13.0 min against DeepFM's 5.0; target <= 3x):
   training seconds of one epoch of the order-2 search model of search_interaction (every pair x the
   configured functions, one table per function, GRDA gates) against one epoch of baselines@deepfm.
   Measured twice: each at its configured batch size (what the pipeline pays), and both at DeepFM's.
2. Per interaction function: ms per batch (forward + backward + both optimizers' steps) of a search model with
   that function only, at the search's batch size: where the search time goes.
3. Inference (paper: retrained AIM 0.83 s vs DeepFM 0.88 s per test set; target <= 1x): seconds per 100k
   test rows of the retrain model (the searched interactions, the searched embedding sizes, the MLP of
   params.yaml `retrain`) against DeepFM; best of --repeats, after a warm-up. Untrained weights: the cost
   of a forward pass does not depend on their values.

``--device cuda`` (or ``auto`` on a machine with a GPU) measures all three on the GPU: the training data, test rows
and models live on the device, as the Trainer places them, and every timing ends with a synchronize. Train rows per
second are reported beside the seconds, since that is the GPU figure people compare.

Run it on a quiet machine (other CPU use is sampled and flagged, as in bench/train_throughput.py). The figures
are computed, printed and written as JSON; met/missed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aim.models import build_model
from aim.search import all_pairs
from aim.train import TrainConfig, Trainer, place, predict, resolve_device
from bench.train_throughput import cpu_busy, log, machine_info, warn_if_busy
from tasks.common import GATES, read_json
from tasks.config import load_params
from tasks.training import from_records, load_encoded

ROOT = Path(__file__).resolve().parents[1]
SEARCH_TARGET, INFERENCE_TARGET = 3.0, 1.0


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(model: torch.nn.Module, data: dict[str, Any], batch_size: int, lr: float, epochs: int,
                  seed: int, device: torch.device) -> float:
    """Training seconds per epoch (validation excluded), after an untimed warm-up on a copy of the model."""
    warm = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, device=str(device), seed=seed)
    Trainer(copy.deepcopy(model), warm).fit(data["train"].slice(0, 8 * batch_size), data["valid"].slice(0, 1024))
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=epochs + 1, lr_decay=1.0,
                         device=str(device), seed=seed, restore_best=False)
    result = Trainer(model, config).fit(data["train"], data["valid"].slice(0, 1024))
    return result.train_seconds / result.epochs_run


def ms_per_batch(model: torch.nn.Module, data: Any, batch_size: int, device: torch.device, batches: int = 12) -> float:
    """Forward + backward + optimizer steps of one batch, averaged over ``batches`` after one warm-up."""
    model = model.to(device)
    optimizers = model.optimizers(1e-3)
    parts = list(data.slice(0, batch_size * (batches + 1)).to(device).batches(batch_size))

    def step(batch: Any) -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
        for o in optimizers:
            o.zero_grad()
        loss.backward()
        for o in optimizers:
            o.step()

    step(parts[0])
    synchronize(device)
    start = time.perf_counter()
    for batch in parts[1:]:
        step(batch)
    synchronize(device)
    return (time.perf_counter() - start) / (len(parts) - 1) * 1000


def inference_seconds_per_100k(model: torch.nn.Module, test: Any, repeats: int, device: torch.device) -> float:
    """Best of ``repeats`` passes over ``test`` (on ``device`` when it fits there, as the Trainer places data)."""
    model, test = model.to(device), place(test, device)
    predict(model, test.slice(0, 4096))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        predict(model, test)
        best = min(best, time.perf_counter() - start)
    return best / len(test) * 100_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=1, help="timed training epochs per model")
    ap.add_argument("--repeats", type=int, default=5, help="timed inference passes (the best counts)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/aim_overhead.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    params = load_params(ROOT / "params.yaml")
    try:
        fields, data = load_encoded()
        gates, embed = read_json(GATES / "interaction.json"), read_json(GATES / "embed.json")
    except Exception as err:  # noqa: BLE001 - the message says what to run
        sys.exit(f"bench.aim_overhead reads the pipeline's outputs: {err}\nrun `make run` (or `dvc repro`) first")
    names = [f.name for f in fields]
    search, seed = params.search, params.seed
    deepfm_hp = params.baselines.hyperparameters("deepfm")
    search_batch = search.train.get("batch_size", params.train.batch_size)
    search_lr = search.train.get("lr", params.train.lr)

    def deepfm() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model("deepfm", fields, **deepfm_hp)

    def search_model(functions: list[str]) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model("aim", fields, interactions=[], candidates=all_pairs(len(fields), functions,
                                                                                 search.gate_init),
                           function_wise=search.mode == "fis_ifs", hidden_units=(), embedding_dim=search.embedding_dim,
                           embedding_l2=search.embedding_l2, grda_lr=search.grda.lr, grda_c=search.grda.c,
                           grda_mu=search.grda.mu)

    busy = cpu_busy()
    warn_if_busy(busy)
    rows = len(data["train"])
    log(f"{rows:,} train rows, {len(fields)} fields, on {device}; DeepFM epoch at batch {params.train.batch_size}")
    results: dict[str, Any] = {"setup": {
        "command": "python -m bench.aim_overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "device": device_name(device), "cpu_busy_percent_before": busy,
        "dataset": params.dataset, "train_rows": rows,
        "fields": len(fields), "functions": search.searched_functions, "search_batch_size": search_batch,
        "deepfm_batch_size": params.train.batch_size, "epochs": args.epochs}}

    deepfm_epoch = epoch_seconds(deepfm(), data, params.train.batch_size, params.train.lr, args.epochs, seed, device)
    log(f"DeepFM: {deepfm_epoch:.2f} s per epoch")
    search_epoch = epoch_seconds(search_model(search.searched_functions), data, search_batch, search_lr, args.epochs,
                                 seed, device)
    log(f"search (order 2, batch {search_batch}): {search_epoch:.2f} s per epoch")
    search_epoch_same_batch = epoch_seconds(search_model(search.searched_functions), data, params.train.batch_size,
                                            search_lr, args.epochs, seed, device)
    log(f"search at DeepFM's batch {params.train.batch_size}: {search_epoch_same_batch:.2f} s per epoch")
    results["search_overhead"] = {
        "deepfm_epoch_seconds": round(deepfm_epoch, 3), "search_epoch_seconds": round(search_epoch, 3),
        "search_epoch_seconds_at_deepfm_batch": round(search_epoch_same_batch, 3),
        "ratio": round(search_epoch / deepfm_epoch, 2),
        "ratio_at_same_batch": round(search_epoch_same_batch / deepfm_epoch, 2),
        "deepfm_train_rows_per_second": round(rows / deepfm_epoch),
        "search_train_rows_per_second": round(rows / search_epoch),
        "search_train_rows_per_second_at_deepfm_batch": round(rows / search_epoch_same_batch),
        "target": SEARCH_TARGET, "met": search_epoch / deepfm_epoch <= SEARCH_TARGET}

    per_function = {}
    for fn in search.searched_functions:
        per_function[fn] = round(ms_per_batch(search_model([fn]), data["train"], search_batch, device), 1)
        log(f"  {fn}: {per_function[fn]} ms per batch of {search_batch}")
    results["ms_per_search_batch_by_function"] = per_function

    kept_dims = [embed["fields"][n]["kept"] for n in names]
    interactions = [it for it in from_records(gates["interactions"], names, GATES / "interaction.json")
                    if all(kept_dims[f] for f in it.fields)]
    torch.manual_seed(seed)
    retrain = build_model("aim", fields, interactions=interactions, function_wise=gates["mode"] == "fis_ifs",
                          embedding_dim=gates["embedding_dim"], kept_dims=kept_dims,
                          hidden_units=params.retrain.hidden_units, dropout=params.retrain.dropout,
                          batch_norm=params.retrain.batch_norm)
    test = data["test"]
    deepfm_inference = inference_seconds_per_100k(deepfm(), test, args.repeats, device)
    retrain_inference = inference_seconds_per_100k(retrain, test, args.repeats, device)
    log(f"inference per 100k rows: DeepFM {deepfm_inference:.3f} s, AIM retrain {retrain_inference:.3f} s "
        f"({len(interactions)} interactions)")
    results["inference"] = {
        "deepfm_seconds_per_100k": round(deepfm_inference, 4), "retrain_seconds_per_100k": round(retrain_inference, 4),
        "retrain_interactions": len(interactions),
        "retrain_parameters": retrain.num_parameters(), "deepfm_parameters": deepfm().num_parameters(),
        "ratio": round(retrain_inference / deepfm_inference, 2), "target": INFERENCE_TARGET,
        "met": retrain_inference / deepfm_inference <= INFERENCE_TARGET}
    results["cpu_busy_percent_after"] = cpu_busy()

    so, inf = results["search_overhead"], results["inference"]
    print(f"search epoch / DeepFM epoch: {so['ratio']:.2f}x as configured "
          f"({so['search_epoch_seconds']:.2f} s vs {so['deepfm_epoch_seconds']:.2f} s; "
          f"{so['search_train_rows_per_second']:,} vs {so['deepfm_train_rows_per_second']:,} train rows/s), "
          f"{so['ratio_at_same_batch']:.2f}x at the same batch; target <= {SEARCH_TARGET:g}x: "
          f"{'met' if so['met'] else 'MISSED'}")
    print("search ms per batch by function: " + ", ".join(f"{k} {v}" for k, v in per_function.items()))
    print(f"inference per 100k rows, AIM retrain / DeepFM: {inf['ratio']:.2f}x ({inf['retrain_seconds_per_100k']:.3f} s"
          f" vs {inf['deepfm_seconds_per_100k']:.3f} s); target <= {INFERENCE_TARGET:g}x: "
          f"{'met' if inf['met'] else 'MISSED'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
