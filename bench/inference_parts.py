"""Benchmark: where the retrained AIM's inference time goes, part by part, beside DeepFM's, on trained models.

    python -m bench.inference_parts [--repeats 15] [--out bench/results/inference_parts.json]

Run it in a pipeline directory after ``dvc repro`` (``make run``, or a clone that ``python -m bench.aim_accuracy
--keep`` left): it loads models/aim.pt and models/baselines/deepfm.pt with ``tasks.training.load_model``, as
``tasks.score`` does, and the test split from data/encoded. The whole test split is one batch. Each figure is the
best of --repeats calls after a warm-up, in ms: ``predict`` for both models (twice, in turn; the retrain both
folded, as ``predict`` runs it, and with ``fold_inference`` off, through its layers), the retrain's folded forward
without its MLP (the native pass, and torch ops) and the build of its folded tables (``FoldedAIM``, once per change
of the weights), then each part of a layered forward pass alone: the retrain's tables (``embed_tables``: its pruned
function-wise tables and the mean the MLP reads), each interaction layer, the gated batch norm, the first-order term
and the MLP; DeepFM's embedding, first-order term, FM term and MLP. The parts of one model need not add up to its
forward: the rest is the sums between them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from aim.layers import gated_batch_norm
from aim.models.aim import FoldedAIM
from aim.models.fm import fm_pairwise
from aim.train import predict
from bench.train_throughput import log, machine_info
from tasks.training import load_encoded, load_model


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return round(best * 1000, 3)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("bench/results/inference_parts.json"))
    args = parser.parse_args()
    _, splits = load_encoded()
    test = splits["test"]
    aim, _ = load_model("models/aim.pt")
    deepfm, _ = load_model("models/baselines/deepfm.pt")
    batch = test.slice(0, len(test))
    result: dict = {"benchmark": "inference parts, retrained AIM and DeepFM", "rows": len(test),
                    "machine": machine_info(), "predict_ms": []}
    def layered(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            aim.fold_inference = False
            try:
                return fn()
            finally:
                aim.fold_inference = True
        return run

    for _ in range(2):  # in turn, twice: all see the same state of the machine
        result["predict_ms"].append({"aim": best_ms(lambda: predict(aim, test), args.repeats),
                                     "aim_layered": best_ms(layered(lambda: predict(aim, test)), args.repeats),
                                     "deepfm": best_ms(lambda: predict(deepfm, test), args.repeats)})
        log("predict: " + ", ".join(f"{k} {v} ms" for k, v in result["predict_ms"][-1].items()))

    folded = FoldedAIM(aim)
    mlp, folded.mlp = folded.mlp, None
    result["folded_ms"] = {"build": best_ms(lambda: FoldedAIM(aim), args.repeats),
                           "forward_without_mlp": best_ms(lambda: folded.logits(batch), args.repeats),
                           "forward_without_mlp_torch_ops": best_ms(lambda: folded.logits(batch, native=False),
                                                                    args.repeats)}
    folded.mlp = mlp
    log("folded: " + ", ".join(f"{k} {v} ms" for k, v in result["folded_ms"].items()))

    full, compact = aim.embed_tables(batch)
    parts = aim.interaction_parts(full)
    aim_parts = {"forward": best_ms(layered(lambda: aim(batch)), args.repeats),
                 "embed_tables": best_ms(lambda: aim.embed_tables(batch), args.repeats)}
    for i, (layer, function) in enumerate(zip(aim.layers, aim.layer_functions, strict=True)):
        table = full[aim.table_of[function]]
        name = f"layer {i}: {layer.num_interactions} x {function}"
        aim_parts[name] = best_ms(lambda f=layer, x=table: f(x), args.repeats)
    if aim.norm is not None:
        gates = torch.cat([g for g in (aim.alpha, aim.alpha_search) if g is not None])
        aim_parts["gated_batch_norm"] = best_ms(lambda: gated_batch_norm(parts, gates, aim.norm), args.repeats)
    if aim.linear is not None:
        aim_parts["first_order"] = best_ms(lambda: aim.linear(batch), args.repeats)
    if aim.mlp is not None:
        aim_parts["mlp"] = best_ms(lambda: aim.mlp(compact), args.repeats)
    embedded = deepfm.embedding(batch)
    deepfm_parts = {"forward": best_ms(lambda: deepfm(batch), args.repeats),
                    "embedding": best_ms(lambda: deepfm.embedding(batch), args.repeats),
                    "first_order": best_ms(lambda: deepfm.linear(batch), args.repeats),
                    "fm_pairwise": best_ms(lambda: fm_pairwise(embedded), args.repeats),
                    "mlp": best_ms(lambda: deepfm.mlp(embedded.flatten(1)), args.repeats)}
    result |= {"aim_parts_ms": aim_parts, "deepfm_parts_ms": deepfm_parts}
    for name, figures in (("AIM (retrain)", aim_parts), ("DeepFM", deepfm_parts)):
        log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
