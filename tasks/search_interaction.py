"""search_interaction: which interactions matter (FIS) and under which functions (IFS), order by order.

Order 2 searches every pair of fields under every function of ``search.functions`` (``mode: fis_ifs``, AIM,
function-wise embeddings) or under the inner product with one shared embedding (``mode: fis``, AutoFIS).
Each order p > 2 searches the top-k field sets of order p-1 crossed with every field (Algorithm 1), with the
interactions kept so far fixed beside it. GRDA drives the gates of useless candidates to exact zeros.

Writes ``gates/interaction.json`` (every kept interaction with its fields by name, order, function and gate;
the selection ratio per order; the search model's validation and test AUC), ``metrics/search_interaction.json``
and one curve per order under ``reports/search_interaction/``.
"""

from __future__ import annotations

from typing import Any

import torch

from aim.data import CTRData, FieldSpec
from aim.models import build_model
from aim.search import GRDA, Interaction, all_pairs, combine, kept, top_k
from tasks import tracking
from tasks.common import GATES, METRICS, StageError, stage_main, write_json
from tasks.config import Params, SearchConfig
from tasks.training import (
    load_encoded,
    save_predictions,
    search_grda_c,
    search_steps,
    to_records,
    train_and_test,
    train_config,
)

# An order that keeps at least this share of its candidates, or order 2 keeping none, gets a warning (from
# UNPRUNED_MIN candidates on: a handful of candidates may well all matter).
UNPRUNED_SHARE, UNPRUNED_MIN = 0.9, 8


def warn_if_unpruned(name: str, order: int, kept: int, candidates: int, section: SearchConfig, grda_c: float,
                     steps: int, key: str) -> str | None:
    """The warning line, printed and returned, when GRDA closed (almost) no gate, or every gate of order 2.

    On a small log the search is short and its threshold stays low, so a ``c`` chosen for a large log keeps
    everything and the retrain gets every interaction under every function; ``reference_steps`` scales ``c`` to
    the search's length, and can then close every gate of a log too small to show any interaction."""
    if candidates < UNPRUNED_MIN or UNPRUNED_SHARE * candidates > kept > 0 or (kept == 0 and order > 2):
        return None
    threshold = GRDA.threshold(section.grda.lr, grda_c, section.grda.mu, steps)
    where = (f"GRDA's threshold ended at {threshold:.3g} after {steps:,} steps (c {grda_c:.3g}; gates start at "
             f"{section.gate_init:g})")
    if kept:
        message = (f"order {order} kept {kept} of {candidates} candidates. {where}, too low to close the gates of "
                   f"this log's noise. To keep fewer, raise {key}.grda.c, or set {key}.grda.reference_steps to the "
                   "length of a search whose c you trust (1,584 steps: Frappe's search at c 0.05), which scales c "
                   "to this search's length.")
    else:
        message = (f"order {order} kept none of {candidates} candidates, so the retrain has no interaction (a "
                   f"first-order model under its MLP). {where}. If this log should show interactions, lower "
                   f"{key}.grda.c (or {key}.grda.reference_steps), or train the search longer ({key}.train.epochs).")
    line = f"{name}: warning: {message}"
    print(line, flush=True)
    return line


def search_warnings(per_order: dict[str, dict[str, Any]]) -> list[str]:
    """The warnings of a search's orders, in order (``search``'s second result), for the stage's metrics."""
    return [run["warning"] for run in per_order.values() if "warning" in run]


def search(params: Params, section: SearchConfig, fields: list[FieldSpec], splits: dict[str, CTRData],
           name: str, stage: str = "search_interaction", key: str = "search",
           ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Algorithm 1 with FIS (+ IFS) at every order. Returns the gate record written to ``gates/`` and, per order,
    the train time and the warning of ``warn_if_unpruned`` if any, kept apart: a gate file holds no wall-clock
    figure, so a re-run that keeps the same gates leaves it byte for byte the same and DVC does not retrain what
    reads it.

    Each order is one tracked run of ``stage``; it ends with the interactions kept so far as a table. ``key`` is the
    params section that sets ``section`` (named in warnings)."""
    names = [f.name for f in fields]
    n = len(fields)
    if n < 2:  # an interaction needs two fields: there is nothing to search, and no search model to report
        raise StageError(f"{stage}: the encoded data has {n} field{'s' * (n != 1)} ({', '.join(names) or 'none'}): "
                         f"searching interactions needs at least 2; add feature columns to the dataset's spec")
    k = section.top_k or max(n // 2, 1)
    functions = section.searched_functions
    config = train_config(params, section.train, f"{name}.train")
    grda_c = search_grda_c(section.grda, config, len(splits["train"]), name)
    steps = search_steps(config, len(splits["train"]))
    selected: list[Interaction] = []
    orders: dict[str, Any] = {}
    timings: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    candidates = all_pairs(n, functions, section.gate_init)
    for order in range(2, section.max_order + 1):
        if not candidates:
            print(f"{name}: no candidates of order {order} (nothing of order {order - 1} was kept); stopping")
            break
        torch.manual_seed(params.seed + order)
        net = build_model(
            "aim", fields, interactions=selected, candidates=candidates, function_wise=section.mode == "fis_ifs",
            hidden_units=(), embedding_dim=section.embedding_dim, embedding_l2=section.embedding_l2,
            grda_lr=section.grda.lr, grda_c=grda_c, grda_mu=section.grda.mu,
        )
        print(f"{name}: order {order}: {len(candidates):,} candidates "
              f"({len({c.fields for c in candidates}):,} field sets x {len(functions)} functions), "
              f"{len(selected)} interactions fixed", flush=True)
        run_config = tracking.run_config(config, search=section, order=order, candidates=len(candidates),
                                         fixed=len(selected))
        with tracking.tracked(stage, f"{name}/order{order}", params, run_config) as tracker:
            summary, probabilities = train_and_test(net, config, splits, f"{name}/order{order}",
                                                    {"section": section.model_dump(), "selected": selected}, tracker)
            searched = net.searched_gates()
            keep = kept(searched, [it.gate for it in searched])
            selected = [*net.fixed_gates(), *keep]
            candidate_sets = {c.fields for c in candidates}
            kept_sets = {it.fields for it in keep}
            orders[str(order)] = {
                "candidates": len(candidates),
                "candidate_field_sets": len(candidate_sets),
                "kept": len(keep),
                "kept_field_sets": len(kept_sets),
                "selection_ratio": round(len(kept_sets) / len(candidate_sets), 6),
                "function_selection_ratio": round(len(keep) / len(candidates), 6),
                "functions_kept": {fn: sum(it.function == fn for it in keep) for fn in functions},
                **{key: summary[key] for key in ("valid_auc", "test_auc", "test_logloss", "epochs")},
            }
            timings[str(order)] = {"train_seconds": summary["train_seconds"],
                                   "seconds_per_epoch": round(summary["train_seconds"] / max(summary["epochs"], 1), 3)}
            tracker.summary(orders[str(order)])  # the selection ratios of this order beside its AUC
            tracker.table("interactions", *tracking.interaction_table(to_records(selected, names)))
        print(f"{name}: order {order}: kept {len(keep)} of {len(candidates)} "
              f"({len(kept_sets)} of {len(candidate_sets)} field sets)", flush=True)
        warning = warn_if_unpruned(name, order, len(keep), len(candidates), section, grda_c, steps, key)
        if warning:
            timings[str(order)]["warning"] = warning
        candidates = combine(top_k(keep, k), n, functions, section.gate_init) if order < section.max_order else []
    save_predictions(name, probabilities)
    return {
        "mode": section.mode,
        "functions": functions,
        "fields": names,
        "max_order": section.max_order,
        "top_k": k,
        "embedding_dim": section.embedding_dim,
        "orders": orders,
        "search_model": {key: summary[key] for key in ("valid_auc", "test_auc", "test_logloss", "parameters")},
        "interactions": to_records(selected, names),
    }, timings


def run(params: Params) -> dict[str, Any]:
    fields, splits = load_encoded(params.dataset)
    record, timings = search(params, params.search, fields, splits, "search_interaction")
    record = {"dataset": params.dataset, **record}  # read_gates refuses it beside another dataset's data
    write_json(GATES / "interaction.json", record)
    metrics = {
        "search_model_valid_auc": record["search_model"]["valid_auc"],
        "search_model_test_auc": record["search_model"]["test_auc"],
        "search_model_test_logloss": record["search_model"]["test_logloss"],
        "kept": len(record["interactions"]),
        **{f"order{p}_selection_ratio": o["selection_ratio"] for p, o in record["orders"].items()},
        **{f"order{p}_kept": o["kept"] for p, o in record["orders"].items()},
        "seconds_per_epoch": timings["2"]["seconds_per_epoch"],
        "train_seconds": round(sum(t["train_seconds"] for t in timings.values()), 3),
        **{f"order{p}_train_seconds": t["train_seconds"] for p, t in timings.items()},
        "warnings": search_warnings(timings),  # make run's summary repeats them
    }
    write_json(METRICS / "search_interaction.json", metrics)
    return record


if __name__ == "__main__":
    stage_main(run)
