"""baselines: train one classic CTR model on the encoded splits and report its test AUC, cost and speed.

DVC runs one stage per model (a ``foreach`` over ``baselines.models`` in params.yaml):

    python -m tasks.baselines fm

writes ``metrics/baselines/fm.json``, ``models/baselines/fm.pt`` and the per-epoch curve
``reports/baselines/fm.csv``. A run that is stopped resumes from ``models/checkpoints/baselines/fm.ckpt`` when
started again with the same params and data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aim.models import build_model
from tasks import tracking
from tasks.common import METRICS, check_command_line, stage_main, write_json
from tasks.config import ConfigError, Params
from tasks.training import MODELS_DIR, load_encoded, save_model, save_predictions, train_and_test, train_config


def metrics_path(model: str) -> Path:
    return METRICS / "baselines" / f"{model}.json"


def run(params: Params, model: str) -> dict[str, Any]:
    if model not in params.baselines.models:
        known = sorted(params.baselines.models)
        raise ConfigError(f"params.yaml: baselines.models: no entry {model!r} (it has {known})")
    hparams = params.baselines.hyperparameters(model)
    fields, splits = load_encoded(params.dataset)
    torch.manual_seed(params.seed)  # the same params give the same initial weights
    try:
        net = build_model(model, fields, **hparams)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"params.yaml: baselines.models.{model}: {err}") from None

    config = train_config(params, params.baselines.train_overrides(model), f"baselines.models.{model}.train")
    run_config = tracking.run_config(config, model=model, hyperparameters=hparams, baselines=params.baselines)
    with tracking.tracked("baselines", f"baselines/{model}", params, run_config) as tracker:
        summary, probabilities = train_and_test(net, config, splits, f"baselines/{model}", hparams, tracker)
    save_predictions(model, probabilities)
    summary = {"model": model, **summary, "hyperparameters": hparams}
    write_json(metrics_path(model), summary)
    save_model(MODELS_DIR / "baselines" / f"{model}.pt", net, fields)
    return summary


def main() -> None:
    model = check_command_line("python -m tasks.baselines <model>   (a key of baselines.models in params.yaml)", 1)[0]
    stage_main(lambda params: run(params, model), checked=True)


if __name__ == "__main__":
    main()
