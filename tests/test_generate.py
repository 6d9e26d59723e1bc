"""The embedded default: deterministic, with a truth file that the ingest quarantine agrees with."""

import hashlib
import json
from pathlib import Path

from tasks import generate, ingest
from tasks.config import GenerateConfig
from tests.conftest import project_params


def test_generator_is_deterministic_and_ingest_finds_the_planted_corruption(workdir: Path) -> None:
    params = project_params("synthetic", generate={"rows": 20_000, "seed": 3, "out_dir": "raw"})
    spec = params.datasets["synthetic"].model_copy(update={"paths": ["raw/clicks.tsv"]})
    params = params.model_copy(update={"datasets": {"synthetic": spec}})
    truth = generate.run(params)
    digest = hashlib.sha256(Path("raw/clicks.tsv").read_bytes()).hexdigest()
    generate.run(params)
    assert hashlib.sha256(Path("raw/clicks.tsv").read_bytes()).hexdigest() == digest
    assert json.loads(Path("raw/truth.json").read_text()) == truth

    assert len(truth["planted_pairs"]) == 4 and len(truth["planted_triples"]) == 2
    assert 0.2 < truth["positive_ratio"] < 0.3
    m = ingest.run(params)
    corrupted = truth["corrupted_lines"]
    assert m["rows_in"] == 20_000 and m["rows_rejected"] == sum(corrupted.values()) > 0
    assert m["rejected_by_reason"] == {"wrong column count": corrupted["wrong_column_count"],
                                       "non-numeric value in I3": corrupted["non_numeric"],
                                       "label outside mapping": corrupted["bad_label"]}


def test_other_seed_other_data() -> None:
    a, truth_a = generate.simulate(GenerateConfig(rows=500, seed=1))
    b, truth_b = generate.simulate(GenerateConfig(rows=500, seed=2))
    assert not a.equals(b) and truth_a["vocab_sizes"] != truth_b["vocab_sizes"]


def test_another_dataset_gets_a_note_not_a_log(workdir: Path) -> None:
    """`dvc exp run -S dataset=frappe` used to write the 200,000-row synthetic log that nothing then read."""
    params = project_params("frappe", generate={"rows": 500, "seed": 3, "out_dir": "raw"})
    Path("raw").mkdir()
    Path("raw/clicks.tsv").write_text("a stale log\n")  # e.g. from a run of python -m tasks.generate before
    assert generate.run(params) == {"generated": False, "dataset": "frappe"}
    assert sorted(p.name for p in Path("raw").iterdir()) == ["NOT_GENERATED.txt"]
    assert "'frappe' does not read" in Path("raw/NOT_GENERATED.txt").read_text()

    spec = params.datasets["synthetic"].model_copy(update={"paths": ["./raw/../raw/clicks.tsv"]})  # any spelling
    params = params.model_copy(update={"dataset": "synthetic", "datasets": {**params.datasets, "synthetic": spec}})
    assert generate.run(params)["rows"] == 500
    assert sorted(p.name for p in Path("raw").iterdir()) == ["clicks.tsv", "truth.json"]
