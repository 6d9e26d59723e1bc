"""The search finds what was planted: the default generator's pairs and triples, through the stage's own search.

The data is the default `generate` config (200k rows, 26 categorical fields with Zipf-distributed values,
4 planted pairs and 2 planted triples) with each categorical column coded by rank; the numeric and multi-valued
columns carry main effects only and are left out to keep the test quick. The search is the one the
`search_interaction` stage runs (tasks.search_interaction.search) with the shipped params.yaml settings, in
AutoFIS mode (inner product): IFS's four functions cost ~10x more CPU time; `make run` reports them on all fields.

Precision counts a kept pair as right when it is planted or lies inside a planted triple: such a pair carries the
triple's marginal signal (the third field's values are far from uniform), which is exactly what lets Algorithm 1
reach the triple from order 2. The strict figure (planted pairs only) is asserted with a lower floor.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from aim.data import CTRData, FieldSpec
from tasks.config import GenerateConfig, SearchConfig, load_params
from tasks.evaluate import recovery
from tasks.generate import simulate
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def planted_data() -> tuple[list[FieldSpec], dict[str, CTRData], dict]:
    table, truth = simulate(GenerateConfig())
    names = [c for c in table.columns if c.startswith("C")]
    codes = table.select(pl.col(c).rank("dense").cast(pl.Int32) for c in names).to_numpy()
    fields = [FieldSpec(n, int(codes[:, i].max()) + 1) for i, n in enumerate(names)]
    label = torch.from_numpy(table["label"].to_numpy().astype(np.float32))
    single = torch.from_numpy(np.ascontiguousarray(codes))
    data = CTRData(tuple(fields), single, (), label)
    n = len(label)
    cut = [0, int(n * 0.8), int(n * 0.9), n]
    splits = {s: data.slice(cut[i], cut[i + 1]) for i, s in enumerate(("train", "valid", "test"))}
    return fields, splits, truth


def test_search_recovers_planted_pairs_and_triples(planted_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tasks.search_interaction import search

    fields, splits, truth = planted_data
    params = load_params(ROOT / "params.yaml")
    section = SearchConfig.model_validate(params.search.model_dump() | {"mode": "fis", "max_order": 3})
    monkeypatch.chdir(tmp_path)  # the search writes its curves and predictions under reports/
    torch.set_num_threads(2)
    gates, _ = search(params, section, fields, splits, "search_interaction")
    found = recovery(gates, truth)
    print(found)
    assert found["pair_recall"] >= 0.8
    assert found["pair_precision_with_triple_subpairs"] >= 0.8
    assert found["pair_precision"] >= 0.5
    assert found["triple_recall"] >= 0.8 and found["triple_precision"] >= 0.8
    assert gates["search_model"]["test_auc"] > 0.75
    # Every kept order-3 interaction grew from a kept pair (Algorithm 1's candidate pool).
    pairs = {frozenset(it["fields"]) for it in gates["interactions"] if it["order"] == 2}
    for it in gates["interactions"]:
        if it["order"] == 3:
            assert any(frozenset(p) in pairs for p in itertools.combinations(it["fields"], 2))


def test_a_search_that_closes_no_gate_or_every_gate_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]):
    """On a small log (16,000 train rows, 128 search steps) the shipped c keeps every pair, and c scaled to Frappe's
    search length closes every gate: both are said, with the keys to change and the threshold GRDA reached."""
    from aim.search import GRDA
    from tasks.search_interaction import search

    table, _ = simulate(GenerateConfig(rows=20_000))
    names = [c for c in table.columns if c.startswith("C")]
    codes = table.select(pl.col(c).rank("dense").cast(pl.Int32) for c in names).to_numpy()
    fields = [FieldSpec(n, int(codes[:, i].max()) + 1) for i, n in enumerate(names)]
    data = CTRData(tuple(fields), torch.from_numpy(np.ascontiguousarray(codes)), (),
                   torch.from_numpy(table["label"].to_numpy().astype(np.float32)))
    splits = {"train": data.slice(0, 16_000), "valid": data.slice(16_000, 18_000), "test": data.slice(18_000, 20_000)}
    params = load_params(ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)

    shipped = SearchConfig.model_validate(params.search.model_dump() | {"mode": "fis", "max_order": 2})
    gates, per_order = search(params, shipped, fields, splits, "search_interaction")
    out = capsys.readouterr().out
    assert gates["orders"]["2"]["kept"] >= 0.9 * 325
    steps = shipped.train["epochs"] * 16  # 16,000 rows at batch 1024
    threshold = GRDA.threshold(shipped.grda.lr, shipped.grda.c, shipped.grda.mu, steps)
    assert f"warning: order 2 kept {gates['orders']['2']['kept']} of 325 candidates" in out
    assert f"ended at {threshold:.3g} after {steps} steps" in out and "raise search.grda.c" in out
    assert per_order["2"]["warning"] in out  # what the stage's metrics keep, for make run's summary

    gate = torch.nn.Parameter(torch.zeros(1))  # the closed form is what GRDA's own increments sum to
    grda = GRDA([gate], lr=shipped.grda.lr, c=shipped.grda.c, mu=shipped.grda.mu)
    for _ in range(steps):
        gate.grad = torch.zeros(1)
        grda.step()
    assert grda.state[gate]["l1"] == pytest.approx(threshold, rel=1e-9)

    scaled = shipped.model_copy(update={"grda": shipped.grda.model_copy(update={"reference_steps": 1584})})
    gates, _ = search(params, scaled, fields, splits, "autofis_search", key="autofis")
    out = capsys.readouterr().out
    assert gates["orders"]["2"]["kept"] == 0 and gates["interactions"] == []
    assert "autofis_search: warning: order 2 kept none of 325 candidates" in out and "lower autofis.grda.c" in out


def test_a_log_with_one_feature_field_is_refused_by_name() -> None:
    """One field has no pair: the search says so instead of failing inside its loop."""
    from tasks.common import StageError
    from tasks.search_interaction import search

    params = load_params(ROOT / "params.yaml")
    with pytest.raises(StageError, match=r"search_interaction: the encoded data has 1 field \(site\): .*at least 2"):
        search(params, params.search, [FieldSpec("site", 5)], {}, "search_interaction")
