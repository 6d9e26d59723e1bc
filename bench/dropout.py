"""Benchmark: ``aim.layers.Dropout`` against ``nn.Dropout`` on CPU, forward + backward, in the same run.

    python -m bench.dropout [--shape 4096,400] [--p 0.2] [--repeats 50] [--out bench/results/dropout.json]

The default shape is one hidden layer of DeepFM's [400, 400, 400] MLP at batch 4096, where the torch profiler
put ``nn.Dropout``'s ``aten::bernoulli_`` at 37 % of a training step. Each side: a few untimed calls, then the
median of ``repeats`` timed forward + backward calls on the same input and upstream gradient.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from aim.layers import Dropout
from bench.train_throughput import cpu_busy, log, machine_info, warn_if_busy

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dropout.json"


def fwd_bwd_ms(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of one ``layer(x).backward(grad)``."""
    layer.train()
    for _ in range(3):
        layer(x).backward(grad)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        layer(x).backward(grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096,400", help="activation shape, comma-separated")
    ap.add_argument("--p", type=float, default=0.2, help="drop probability")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    busy = cpu_busy()
    warn_if_busy(busy)
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    reference = fwd_bwd_ms(nn.Dropout(args.p), x, grad, args.repeats)
    ours = fwd_bwd_ms(Dropout(args.p), x, grad, args.repeats)
    result = {
        "benchmark": "dropout forward + backward on CPU: aim.layers.Dropout vs nn.Dropout",
        "shape": list(shape), "p": args.p, "repeats": args.repeats, "cpu_busy_before_percent": busy,
        "machine": machine_info(),
        "nn_dropout_ms": round(reference, 3), "ours_ms": round(ours, 3), "speedup": round(reference / ours, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"shape {list(shape)}, p {args.p}: nn.Dropout {reference:.2f} ms, ours {ours:.2f} ms, "
          f"{reference / ours:.2f}x")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
