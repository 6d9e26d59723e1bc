"""baselines: train one classic CTR model on the encoded splits and report its test AUC, cost and speed.

DVC runs one stage per model (a ``foreach`` over ``baselines.models`` in params.yaml):

    python -m tasks.baselines fm

writes ``metrics/baselines/fm.json``, ``models/baselines/fm.pt`` and the per-epoch curve
``reports/baselines/fm.csv``. A run that is stopped resumes from ``models/checkpoints/fm.ckpt`` when
started again with the same params and data.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aim.models import build_model
from aim.train import Trainer, metrics, predict
from tasks.common import FEATURE_MAP, METRICS, REPORTS, split_path, stage_main, write_json
from tasks.config import ConfigError, Params
from tasks.training import Checkpoint, History, fingerprint, load_encoded, train_config

MODELS_DIR = Path("models")


def metrics_path(model: str) -> Path:
    return METRICS / "baselines" / f"{model}.json"


def run(params: Params, model: str) -> dict[str, Any]:
    if model not in params.baselines.models:
        known = sorted(params.baselines.models)
        raise ConfigError(f"params.yaml: baselines.models: no entry {model!r} (it has {known})")
    hparams = params.baselines.hyperparameters(model)
    fields, splits = load_encoded()
    torch.manual_seed(params.seed)  # the same params give the same initial weights
    try:
        net = build_model(model, fields, **hparams)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"params.yaml: baselines.models.{model}: {err}") from None

    config = train_config(params, params.baselines.train_overrides(model), f"baselines.models.{model}.train")
    trainer = Trainer(net, config, callbacks=[History(REPORTS / "baselines" / f"{model}.csv", model)])
    key = fingerprint(model, hparams, dataclasses.asdict(config) | {"progress": None}, FEATURE_MAP,
                      *(split_path(s).stat().st_size for s in ("train", "valid", "test")))
    checkpoint = Checkpoint(MODELS_DIR / "checkpoints" / f"{model}.ckpt", key)
    checkpoint.restore(trainer)
    trainer.callbacks.append(checkpoint)
    print(f"{model}: {net.num_parameters():,} parameters, {len(splits['train']):,} train rows, "
          f"device {trainer.device}, {config.precision}")
    result = trainer.fit(splits["train"], splits["valid"])

    test = splits["test"]
    predict(net, test.slice(0, 1024), config.eval_batch_size, precision=config.precision)  # warm-up
    start = time.perf_counter()
    probabilities = predict(net, test, config.eval_batch_size, precision=config.precision)
    inference = time.perf_counter() - start
    scores = metrics(test.label.cpu().numpy(), probabilities)

    summary = {
        "model": model,
        "test_auc": scores["auc"],
        "test_logloss": scores["logloss"],
        "valid_auc": result.best_valid_auc,
        "parameters": net.num_parameters(),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 3),
        "train_samples_per_second": round(result.train_samples_per_second, 1),
        "inference_seconds_per_100k": round(inference / len(test) * 100_000, 4),
        "device": str(trainer.device),
        "precision": config.precision,
        "hyperparameters": hparams,
    }
    write_json(metrics_path(model), summary)
    out = MODELS_DIR / "baselines" / f"{model}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "hyperparameters": hparams, "fields": [dataclasses.asdict(f) for f in fields],
                "state_dict": net.state_dict()}, out)
    checkpoint.remove()  # finished: the next run starts afresh
    print(f"{model}: test AUC {scores['auc']:.5f}, logloss {scores['logloss']:.5f} "
          f"(best epoch {result.best_epoch} of {result.epochs_run}, {result.train_seconds:.1f} s training)")
    return summary


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        print("usage: python -m tasks.baselines <model>   (a key of baselines.models in params.yaml)",
              file=sys.stderr)
        sys.exit(2)
    stage_main(lambda params: run(params, argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
