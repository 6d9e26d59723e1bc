"""autofis: the AutoFIS baseline, AIM's predecessor: FIS with the inner product, then retrain.

The same search and retrain as the AIM stages (``tasks/search_interaction.py``, ``tasks/retrain.py``), with
``search`` overlaid by the ``autofis`` section (by default ``mode: fis``: pairs and, up to search's ``max_order``,
higher orders under the inner product, one shared embedding table), no embedding-dimension search, and the retrain
settings of ``retrain``. The AIM paper compares AutoFIS and AIM at the same maximum order (Table 3; its Table 2's
AutoFIS is the 4th-order one), which is why ``max_order`` is not overridden here. Writes ``gates/autofis.json``,
``metrics/autofis.json`` and ``models/autofis.pt``.
"""

from __future__ import annotations

from typing import Any

from tasks.common import GATES, METRICS, stage_main, write_json
from tasks.config import Params, overlay
from tasks.retrain import retrain
from tasks.search_interaction import search, search_warnings
from tasks.training import MODELS_DIR, load_encoded, save_model


def run(params: Params) -> dict[str, Any]:
    section = overlay(params.search, params.autofis, "autofis")
    fields, splits = load_encoded(params.dataset)
    gates, timings = search(params, section, fields, splits, "autofis_search", stage="autofis", key="autofis")
    gates = {"dataset": params.dataset, **gates}  # read_gates refuses it beside another dataset's data
    write_json(GATES / "autofis.json", gates)
    summary, net = retrain(params, params.retrain, fields, splits, gates, None, "autofis",
                           GATES / "autofis.json", stage="autofis")
    summary = {"model": "autofis", **summary, "search_model_test_auc": gates["search_model"]["test_auc"],
               "order2_selection_ratio": gates["orders"]["2"]["selection_ratio"],
               "search_train_seconds": round(sum(t["train_seconds"] for t in timings.values()), 3),
               "warnings": search_warnings(timings)}
    write_json(METRICS / "autofis.json", summary)
    save_model(MODELS_DIR / "autofis.pt", net, fields)
    return summary


if __name__ == "__main__":
    stage_main(run)
