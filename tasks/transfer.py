"""transfer: the searched interaction x function set plugged into DeepFM and IPNN (AIM paper, Table 10).

One stage per entry of ``transfer.models`` (``deepfm_if``, ``ipnn_if``, as registered in aim.models), trained
like a baseline with the interactions of ``gates/interaction.json``:

    python -m tasks.transfer deepfm_if

writes ``metrics/transfer/deepfm_if.json``, ``models/transfer/deepfm_if.pt`` and ``reports/transfer/deepfm_if.csv``.
"""

from __future__ import annotations

from typing import Any

import torch

from aim.models import build_model
from tasks import tracking
from tasks.common import GATES, METRICS, check_command_line, read_gates, stage_main, write_json
from tasks.config import ConfigError, Params
from tasks.training import (
    MODELS_DIR,
    from_records,
    load_encoded,
    save_model,
    save_predictions,
    train_and_test,
    train_config,
)


def run(params: Params, model: str) -> dict[str, Any]:
    if model not in params.transfer.models:
        raise ConfigError(f"params.yaml: transfer.models: no entry {model!r} (it has {sorted(params.transfer.models)})")
    hparams = params.transfer.hyperparameters(model)
    fields, splits = load_encoded(params.dataset)
    gates = read_gates("interaction.json", params.dataset)
    interactions = from_records(gates["interactions"], [f.name for f in fields], GATES / "interaction.json")
    torch.manual_seed(params.seed)
    try:
        net = build_model(model, fields, interactions=interactions, **hparams)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"params.yaml: transfer.models.{model}: {err}") from None
    config = train_config(params, params.transfer.train_overrides(model), f"transfer.models.{model}.train")
    run_config = tracking.run_config(config, model=model, hyperparameters=hparams, transfer=params.transfer,
                                     interactions=len(interactions))
    with tracking.tracked("transfer", f"transfer/{model}", params, run_config) as tracker:
        summary, probabilities = train_and_test(net, config, splits, f"transfer/{model}",
                                                {"hparams": hparams, "gates": gates}, tracker)
        tracker.table("interactions", *tracking.interaction_table(gates["interactions"]))
    save_predictions(model, probabilities)
    summary = {"model": model, **summary, "interactions": len(interactions), "hyperparameters": hparams}
    write_json(METRICS / "transfer" / f"{model}.json", summary)
    save_model(MODELS_DIR / "transfer" / f"{model}.pt", net, fields)
    return summary


def main() -> None:
    model = check_command_line("python -m tasks.transfer <model>   (a key of transfer.models in params.yaml)", 1)[0]
    stage_main(lambda params: run(params, model), checked=True)


if __name__ == "__main__":
    main()
