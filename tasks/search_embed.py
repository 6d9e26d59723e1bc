"""search_embed: how many embedding dimensions each field needs (EDS), with the searched interactions fixed.

A gate per field x dimension (shared by the field's function-wise embeddings) multiplies the embeddings;
GRDA trains the gates, Adam everything else (the interaction gates stay as attention weights: they are
never searched together with these). A dimension whose gate ends exactly at zero is pruned.

Writes ``gates/embed.json``: per field the kept dimension positions and the resulting size, and the
embedding parameters before and after; ``metrics/search_embed.json``; ``reports/search_embed.csv``.
"""

from __future__ import annotations

from typing import Any

import torch

from aim.models import build_model
from tasks import tracking
from tasks.common import GATES, METRICS, read_gates, stage_main, write_json
from tasks.config import Params
from tasks.training import from_records, load_encoded, search_grda_c, train_and_test, train_config


def run(params: Params) -> dict[str, Any]:
    section = params.search_embed
    fields, splits = load_encoded(params.dataset)
    names = [f.name for f in fields]
    gates = read_gates("interaction.json", params.dataset)
    interactions = from_records(gates["interactions"], names, GATES / "interaction.json")
    d = gates["embedding_dim"]
    tables = len(gates["functions"]) if gates["mode"] == "fis_ifs" else 1
    summary: dict[str, Any] = {}
    if section.enabled and interactions:
        config = train_config(params, section.train, "search_embed.train")
        grda_c = search_grda_c(section.grda, config, len(splits["train"]), "search_embed")
        torch.manual_seed(params.seed)
        net = build_model(
            "aim", fields, interactions=interactions, function_wise=gates["mode"] == "fis_ifs", search_dims=True,
            hidden_units=(), embedding_dim=d, embedding_l2=section.embedding_l2, dim_gate_init=section.dim_gate_init,
            grda_lr=section.grda.lr, grda_c=grda_c, grda_mu=section.grda.mu,
        )
        run_config = tracking.run_config(config, search_embed=section, mode=gates["mode"], embedding_dim=d,
                                         interactions=len(interactions))
        with tracking.tracked("search_embed", "search_embed", params, run_config) as tracker:
            summary, _ = train_and_test(net, config, splits, "search_embed",
                                        {"section": section.model_dump(), "gates": gates}, tracker)
            beta = net.dim_gates.detach().cpu()
            kept = [torch.nonzero(beta[i]).flatten().tolist() for i in range(len(fields))]
            tracker.table("embedding_sizes", *tracking.embedding_table(dict(zip(names, kept, strict=True))))
    else:
        print("search_embed: disabled (or no interactions kept): every field keeps all "
              f"{d} dimensions", flush=True)
        kept = [list(range(d)) for _ in fields]
    vocab = [f.vocab_size for f in fields]
    before = tables * d * sum(vocab)
    after = tables * sum(v * len(k) for v, k in zip(vocab, kept, strict=True))
    record = {
        "dataset": params.dataset,  # read_gates refuses it beside another dataset's data
        "embedding_dim": d,
        "tables": tables,
        "searched": bool(section.enabled and interactions),
        "fields": {name: {"kept": k, "size": len(k)} for name, k in zip(names, kept, strict=True)},
        "embedding_parameters_before": before,
        "embedding_parameters_after": after,
        "search_model": {key: summary[key] for key in ("valid_auc", "test_auc", "test_logloss")} if summary else None,
    }
    write_json(GATES / "embed.json", record)
    sizes = [len(k) for k in kept]
    write_json(METRICS / "search_embed.json", {
        "mean_embedding_size": round(sum(sizes) / len(sizes), 3),
        "fields_pruned_to_zero": sum(s == 0 for s in sizes),
        "embedding_parameters_before": before,
        "embedding_parameters_after": after,
        "embedding_parameter_ratio": round(after / before, 6),
        **({f"search_model_{k}": v for k, v in record["search_model"].items()} if summary else {}),
    })
    print(f"search_embed: sizes {dict(zip(names, sizes, strict=True))}; embedding parameters {before:,} -> {after:,}")
    return record


if __name__ == "__main__":
    stage_main(run)
