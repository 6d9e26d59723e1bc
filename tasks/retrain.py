"""retrain: the final AIM model, built from what the searches kept, trained from scratch.

Only the selected interaction x function pairs; each field's embedding table has only its searched
dimensions (``gates/embed.json``; functions that need equal sizes see zeros in the pruned positions, no
parameters added); the interaction gates kept as attention weights; an MLP beside them. All parameters
by Adam. A field that kept no dimension takes part through its first-order weight only.

Writes ``models/aim.pt``, ``metrics/retrain.json`` (test AUC and logloss, parameters before and after EDS,
train and inference time) and ``reports/retrain.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aim.data import CTRData, FieldSpec
from aim.models import build_model
from aim.search import Interaction
from tasks import tracking
from tasks.common import GATES, METRICS, read_gates, stage_main, write_json
from tasks.config import Params, RetrainConfig
from tasks.training import (
    MODELS_DIR,
    from_records,
    load_encoded,
    save_model,
    save_predictions,
    to_records,
    train_and_test,
    train_config,
)


def retrain(params: Params, section: RetrainConfig, fields: list[FieldSpec], splits: dict[str, CTRData],
            gates: dict[str, Any], kept_dims: list[list[int]] | None, name: str,
            source: Path = GATES / "interaction.json", stage: str = "retrain") -> tuple[dict[str, Any], Any]:
    """Train the retrain model for a gate record (and optional kept dimensions); returns its summary and net.

    One tracked run of ``stage``, with the interactions and embedding sizes it was built from as tables."""
    names = [f.name for f in fields]
    interactions: list[Interaction] = from_records(gates["interactions"], names, source)
    dropped = 0
    if kept_dims is not None:  # an interaction with a field that kept nothing is constant zero: leave it out
        usable = [it for it in interactions if all(kept_dims[f] for f in it.fields)]
        dropped = len(interactions) - len(usable)
        interactions = usable
    hparams = {
        "interactions": interactions, "function_wise": gates["mode"] == "fis_ifs", "embedding_dim":
        gates["embedding_dim"], "embedding_l2": section.embedding_l2, "hidden_units": section.hidden_units,
        "dropout": section.dropout, "batch_norm": section.batch_norm,
    }
    torch.manual_seed(params.seed)
    net = build_model("aim", fields, kept_dims=kept_dims, **hparams)
    full_size = build_model("aim", fields, **hparams).num_parameters()  # the same model before EDS
    config = train_config(params, section.train, f"{name}.train")
    run_config = tracking.run_config(config, retrain=section, searched_dims=kept_dims is not None,
                                     hyperparameters=hparams | {"interactions": len(interactions)})  # the list: a table
    with tracking.tracked(stage, name, params, run_config) as tracker:
        summary, probabilities = train_and_test(net, config, splits, name,
                                                {"section": section.model_dump(), "gates": gates, "kept": kept_dims},
                                                tracker)
        summary = {
            **summary,
            "parameters_before_eds": full_size,
            "parameters_after_eds": net.num_parameters(),
            "interactions": len(interactions),
            "interactions_dropped_with_pruned_fields": dropped,
            "interactions_by_order": {str(p): sum(it.order == p for it in interactions)
                                      for p in sorted({it.order for it in interactions})},
        }
        tracker.summary(summary)  # the parameter counts before and after EDS beside the test AUC
        tracker.table("interactions", *tracking.interaction_table(to_records(interactions, names)))
        if kept_dims is not None:
            tracker.table("embedding_sizes", *tracking.embedding_table(dict(zip(names, kept_dims, strict=True))))
    save_predictions(name, probabilities)
    return summary, net


def run(params: Params) -> dict[str, Any]:
    fields, splits = load_encoded(params.dataset)
    gates = read_gates("interaction.json", params.dataset)
    embed = read_gates("embed.json", params.dataset)
    names = [f.name for f in fields]
    missing = [n for n in names if n not in embed["fields"]]
    if missing:
        raise ValueError(f"{GATES / 'embed.json'} has no entry for field {missing[0]!r}: re-run search_embed")
    kept_dims = [embed["fields"][n]["kept"] for n in names]
    summary, net = retrain(params, params.retrain, fields, splits, gates, kept_dims, "retrain")
    write_json(METRICS / "retrain.json", {"model": "aim", **summary})
    save_model(MODELS_DIR / "aim.pt", net, fields)
    print(f"retrain: parameters {summary['parameters_before_eds']:,} before EDS, "
          f"{summary['parameters_after_eds']:,} after")
    return summary


if __name__ == "__main__":
    stage_main(run)
