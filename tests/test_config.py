"""params.yaml is validated up front: wrong types, unknown and missing keys are named with the file."""

from pathlib import Path

import pytest
import yaml

from tasks.config import ConfigError, load_params, parse_params
from tests.conftest import ROOT

MINIMAL = {"dataset": "t", "datasets": {"t": {"paths": ["x.tsv"], "format": "tsv",
                                              "columns": {"label": {"kind": "label", "positive": ["1"]}}}}}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_project_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.dataset in params.datasets
    criteo = params.datasets["criteo"]
    assert list(criteo.columns)[:3] == ["label", "I1", "I2"] and len(criteo.columns) == 40  # I{1..13} expanded


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "encode": {"min_cuont": 3}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "encode.min_cuont: unknown key" in str(err.value)


def test_a_misspelled_section_is_named_not_ignored(tmp_path: Path) -> None:
    """A top-level typo (``trian:``) would otherwise leave `train` at its defaults without a word."""
    path = write(tmp_path, {**MINIMAL, "trian": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        load_params(path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "encode": {"min_count": "many"}})
    with pytest.raises(ConfigError, match=r"encode\.min_count: .*integer"):
        load_params(path)


def test_missing_required_key_is_named(tmp_path: Path) -> None:
    raw = {"dataset": "t", "datasets": {"t": {"format": "tsv", "columns": {"label": "label"}}}}
    with pytest.raises(ConfigError, match=r"datasets\.t\.paths: required key is missing"):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize(("section", "models", "message"), [
    ("baselines", {"deepfn": None}, r"baselines\.models\.deepfn: unknown model; registered models: \[.*'deepfm'"),
    ("transfer", {"ipnn_if": {"hiden_units": [8]}}, r"transfer\.models\.ipnn_if\.hiden_units: unknown hyper"),
    ("baselines", {"fm": {"embedding_dim": 0}}, r"baselines\.models\.fm\.embedding_dim: must be a whole number >= 1"),
    ("baselines", {"fm": {"train": {"lrr": 0.1}}}, r"baselines\.models\.fm\.train\.lrr: unknown key"),
])
def test_a_bad_model_entry_stops_any_stage_at_load(section: str, models: dict, message: str) -> None:
    """A typo in a model's name or hyper-parameter is an error when params.yaml is read (the first stage of
    `dvc repro`), not when the training stage that builds the model is reached."""
    with pytest.raises(ConfigError, match=message):
        parse_params({**MINIMAL, section: {"models": models}})


@pytest.mark.parametrize(("raw", "message"), [
    ({"train": {"lr_decay_patience": 2}}, r"train: lr_decay_patience 2 >= patience 2: training would stop before"),
    ({"train": {"patience": 3, "lr_decay_patience": 2}, "retrain": {"train": {"patience": 2}}},
     r"\n  retrain\.train: lr_decay_patience 2 >= patience 2"),
    ({"baselines": {"models": {"fm": {"train": {"lr_decay_patience": 2}}}}},
     r"\n  baselines\.models\.fm\.train: lr_decay_patience 2 >= patience 2"),
    ({"search": {"train": {"lr": -1}}}, r"\n  search\.train\.lr: Input should be greater than 0"),
    ({"autofis": {"mode": "fis", "train": {"lr_decay_patience": 2}}},
     r"\n  autofis\.train: lr_decay_patience 2 >= patience 2"),
    ({"autofis": {"mode": "fis", "train": {"lrr": 0.1}}}, r"\n  autofis\.train\.lrr: unknown key"),
])
def test_a_stages_train_settings_are_checked_with_the_shared_ones_at_load(raw: dict, message: str) -> None:
    """A stage trains with `train` and its own `train:` keys on top: a combination that cannot train (a decay that
    waits as long as patience never happens) fails when params.yaml is read, naming the stage's key."""
    with pytest.raises(ConfigError, match=message):
        parse_params({**MINIMAL, **raw})


@pytest.mark.parametrize(("autofis", "message"), [
    ({"mode": "fis", "modee": "fis_ifs"}, r"\n  autofis\.modee: unknown key$"),
    ({"mode": "fsi"}, r"\n  autofis\.mode: Input should be 'fis' or 'fis_ifs'"),
])
def test_the_autofis_section_is_checked_at_load(autofis: dict, message: str) -> None:
    """`autofis` is `search` with its keys on top: a typo there stops the first stage, not the autofis stage
    after both searches have run."""
    with pytest.raises(ConfigError, match=message):
        parse_params({**MINIMAL, "autofis": autofis})


def test_a_decay_patience_below_patience_or_without_decay_is_accepted() -> None:
    assert parse_params({**MINIMAL, "train": {"patience": 3, "lr_decay_patience": 2}}).train.lr_decay_patience == 2
    assert parse_params({**MINIMAL, "train": {"lr_decay_patience": 2, "lr_decay": 1.0}}).train.lr_decay == 1.0
    assert parse_params({**MINIMAL, "train": {"patience": 1}}).train.patience == 1  # decay patience 1: as before


def test_embedding_dim_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"search\.embedding_dim: .*greater than or equal to 1"):
        parse_params({**MINIMAL, "search": {"embedding_dim": 0}})
    with pytest.raises(ConfigError, match=r"baselines\.embedding_dim: .*greater than or equal to 1"):
        parse_params({**MINIMAL, "baselines": {"embedding_dim": 0}})


def test_unknown_dataset_and_bad_fractions() -> None:
    with pytest.raises(ConfigError, match="'nope' is not one of datasets"):
        parse_params({**MINIMAL, "dataset": "nope"})
    with pytest.raises(ConfigError, match="sum to 1"):
        parse_params({**MINIMAL, "encode": {"split": {"fractions": [0.5, 0.2, 0.2]}}})


@pytest.mark.parametrize("fractions", [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [1.1, -0.1, 0.0]])
def test_a_split_without_rows_is_refused(fractions: list[float]) -> None:
    """[1.0, 0.0, 0.0] was accepted, and validate then failed on an empty split without naming this key."""
    with pytest.raises(ConfigError, match=r"encode\.split\.fractions: train, valid and test fractions must each be "
                                          r"above 0"):
        parse_params({**MINIMAL, "encode": {"split": {"fractions": fractions}}})


def test_column_kind_checked() -> None:
    raw = {"dataset": "t", "datasets": {"t": {"paths": ["x"], "format": "tsv",
                                               "columns": {"label": "label", "C1": "categorial"}}}}
    with pytest.raises(ConfigError, match=r"datasets\.t\.columns\.C1\.kind"):
        parse_params(raw)


def with_columns(columns: dict) -> dict:
    """MINIMAL with dataset t's columns replaced."""
    return {**MINIMAL, "datasets": {"t": {**MINIMAL["datasets"]["t"], "columns": columns}}}


@pytest.mark.parametrize(("label", "message"), [
    ({"positive": ["1"], "negative": ["1", "0"]},
     r"columns\.clicked\.negative: \['1'\] also in `positive`"),  # every row was a no-click
    ({"positive": ["1"], "threshold": 3}, r"columns\.clicked\.threshold: give a `threshold` or `positive`/`negative` "
                                          r"values, not both \(`positive` set too\)"),  # the threshold won
    ({"positive": ["1"], "negative": ["0"], "threshold": 3}, r"columns\.clicked\.threshold: .*`positive`, `negative`"),
])
def test_a_contradictory_label_is_refused(label: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(with_columns({"clicked": {"kind": "label", **label}, "site": "categorical"}))


@pytest.mark.parametrize(("column", "message"), [
    ({"kind": "categorical", "bucketing": "quantile"}, r"c\.bucketing: applies to numeric columns only; this column is "
                                                       r"categorical"),
    ({"kind": "categorical", "buckets": 8}, r"c\.buckets: applies to numeric columns only"),
    ({"kind": "numeric", "bucketing": "identity", "buckets": 8}, r"c\.buckets: applies to `bucketing: quantile` only"),
    ({"kind": "categorical", "separator": ","}, r"c\.separator: applies to multi_valued columns only"),
    ({"kind": "numeric", "max_length": 3}, r"c\.max_length: applies to multi_valued columns only"),
    ({"kind": "categorical", "time_format": "unix_ms"}, r"c\.time_format: applies to timestamp columns only"),
    ({"kind": "numeric", "derive": ["hour"]}, r"c\.derive: applies to timestamp columns only"),
    ({"kind": "numeric", "prefix": 2}, r"c\.prefix: applies to categorical columns only"),
    ({"kind": "categorical", "field": "genres"}, r"c\.field: applies to flag columns only"),
    ({"kind": "categorical", "positive": ["1"]}, r"c\.positive: applies to label columns only"),
])
def test_a_key_that_does_nothing_for_its_kind_is_named(column: dict, message: str) -> None:
    """Such keys were accepted and did nothing: a categorical column with `bucketing: quantile` stayed categorical."""
    with pytest.raises(ConfigError, match=rf"datasets\.t\.columns\.{message}"):
        parse_params(with_columns({"label": {"kind": "label", "positive": ["1"]}, "c": column}))


def test_a_dropped_column_keeps_its_settings() -> None:
    """`kind: drop` leaves a column out without its other keys having to go (and come back) with it."""
    params = parse_params(with_columns({"label": {"kind": "label", "positive": ["1"]},
                                        "price": {"kind": "drop", "bucketing": "quantile", "buckets": 8}}))
    assert params.spec.columns["price"].kind == "drop"


CLICKED = {"clicked": {"kind": "label", "positive": ["1"]}}
SIDE = {"path": "s.tsv", "key": "user"}  # a side table joined on the main log's `user`


@pytest.mark.parametrize(("spec", "message"), [
    # a side table's column beside the main log's became device_right, which no field read
    ({"columns": {**CLICKED, "user": "categorical", "device": "categorical"},
      "joins": [{**SIDE, "columns": {"user": "categorical", "device": "categorical"}}]},
     r"joins\.0\.columns\.device: 'device' clashes with columns\.device: the join would keep this table's as "
     r"'device_right'"),
    ({"columns": {**CLICKED, "user": "categorical", "item": "categorical", "a": {"kind": "flag", "field": "genres"}},
      "joins": [{**SIDE, "key": "item", "columns": {"item": "categorical", "b": {"kind": "flag", "field": "genres"}}}]},
     r"joins\.0\.columns\.b: 'genres' clashes with columns\.a\.field"),
    # a raw column named as a field that a timestamp derives: encode kept one of the two
    ({"columns": {**CLICKED, "ts": {"kind": "timestamp", "derive": ["hour", "weekday"]}, "ts_hour": "categorical"}},
     r"columns\.ts_hour: 'ts_hour' clashes with columns\.ts\.derive: encode would make two fields of one name"),
    ({"columns": {**CLICKED, "user": "categorical", "ts": "timestamp"},
      "joins": [{**SIDE, "columns": {"user": "categorical", "ts_weekend": "numeric"}}]},
     r"joins\.0\.columns\.ts_weekend: 'ts_weekend' clashes with columns\.ts\.derive"),
    ({"columns": {**CLICKED, "genres": "categorical", "a": {"kind": "flag", "field": "genres"}}},
     r"columns\.a: 'genres' clashes with columns\.genres: the rows cannot hold two columns of one name"),
    # `label` names the label in rows.parquet and the encoded splits (Polars' DuplicateError in ingest)
    ({"columns": {**CLICKED, "label": "categorical"}}, r"columns\.label: 'label' is the name of the label"),
    ({"columns": {"label": "categorical", "item": "categorical"}, "implicit": {"user": "label", "item": "item"}},
     r"columns\.label: 'label' is the name of the label"),  # sampling's label overwrote it
    ({"columns": {**CLICKED, "a": {"kind": "flag", "field": "label"}}},
     r"columns\.a: 'label' is the name of the label"),
    # a join key of two kinds (Polars' SchemaError), or one the rows do not have (ColumnNotFoundError)
    ({"columns": {**CLICKED, "user": "numeric"},
      "joins": [{**SIDE, "columns": {"user": "categorical", "a": "numeric"}}]},
     r"joins\.0\.columns\.user\.kind: the join key is categorical here and numeric in columns\.user"),
    ({"columns": {**CLICKED, "user": "drop"}, "joins": [{**SIDE, "columns": {"user": "categorical", "a": "numeric"}}]},
     r"joins\.0\.key: 'user' is not a column of the rows it joins"),
    ({"columns": {**CLICKED, "user": "categorical"},
      "joins": [{**SIDE, "columns": {"user": "categorical", "rating": {"kind": "label", "threshold": 4}}}]},
     r"joins\.0\.columns\.rating: a side table cannot hold the label"),
])
def test_column_names_that_clash_are_named(spec: dict, message: str) -> None:
    raw = {**MINIMAL, "datasets": {"t": {"paths": ["x.tsv"], "format": "tsv", **spec}}}
    with pytest.raises(ConfigError, match=rf"datasets\.t\.{message}"):
        parse_params(raw)


@pytest.mark.parametrize("name", ["line", "undecodable", "_line", "_reason", "_n_fields", "_unbalanced", "_no_colon",
                                  "_used"])
def test_a_column_named_as_ingests_own_is_named(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"datasets\.t\.columns\.{name}: '{name}' is the name of ingest's own col"):
        parse_params(with_columns({**CLICKED, name: "categorical"}))
    side = {**SIDE, "columns": {"user": "categorical", name: "categorical"}}
    raw = with_columns({**CLICKED, "user": "categorical"})
    raw["datasets"]["t"]["joins"] = [side]
    with pytest.raises(ConfigError, match=rf"datasets\.t\.joins\.0\.columns\.{name}: '{name}' is the name of ingest"):
        parse_params(raw)


def test_names_that_do_not_clash_are_kept() -> None:
    """rejected.parquet's own columns are a table apart; a dropped column makes no column; a join may key on an
    earlier join's column; the label column itself may be called `label`."""
    spec = {"paths": ["x.tsv"], "format": "tsv",
            "columns": {"label": {"kind": "label", "positive": ["1"]}, "user": "categorical", "file": "categorical",
                        "reason": "categorical", "detail": "numeric", "raw": "categorical", "zip": "drop",
                        "ts": {"kind": "timestamp", "derive": ["hour"]}, "ts_weekday": "categorical"},
            "joins": [{**SIDE, "columns": {"user": "categorical", "zip": "categorical", "city": "categorical"}},
                      {**SIDE, "key": "city", "columns": {"city": "categorical", "region": "categorical"}}]}
    assert parse_params({**MINIMAL, "datasets": {"t": spec}}).spec.joins[1].key == "city"


def test_the_reserved_names_are_the_pipelines() -> None:
    """Each of INGEST_COLUMNS really clashes in ingest (so none is refused for nothing), and `label` is LABEL."""
    import polars as pl

    from tasks.common import LABEL
    from tasks.config import INGEST_COLUMNS, LABEL_COLUMN, ColumnSpec, DatasetSpec, ImplicitSpec
    from tasks.ingest import parse_lines, parse_quoted_lines, sample_negatives

    assert LABEL == LABEL_COLUMN

    def clashes(name: str) -> bool:
        columns = {"y": ColumnSpec(kind="label", positive=["1"]), name: ColumnSpec(kind="categorical")}
        lines = pl.DataFrame({"line": ["1 3:a", "1,a"], "undecodable": [False, False], "_line": [1, 2]})
        try:
            for parsed in (parse_lines(lines[:1], columns, " ", libfm=True), parse_lines(lines[:1], columns, " "),
                           parse_quoted_lines(lines[1:], columns, ",", '"')):
                if parsed[0][name].to_list() not in (["3"], ["3:a"], ["a"]):
                    return True
            spec = DatasetSpec.model_construct(implicit=ImplicitSpec(user="u", item=name, negatives=1))
            sample_negatives(pl.DataFrame({"u": ["p", "p", "q"], name: ["a", "b", "c"]}), spec, 0)
        except (pl.exceptions.PolarsError, TypeError):  # TypeError: with_columns(_n_fields=..., **{"_n_fields": ...})
            return True
        return False

    assert [n for n in INGEST_COLUMNS if not clashes(n)] == []
    assert [n for n in ("file", "reason", "detail", "raw", "x") if clashes(n)] == []


def test_overrides_like_dvc_set_param(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, MINIMAL), overrides={"encode.min_count": 5})
    assert params.encode.min_count == 5


def test_a_preset_overrides_the_sections_only_when_it_is_the_chosen_dataset(tmp_path: Path) -> None:
    import copy

    raw = copy.deepcopy(MINIMAL)
    raw["datasets"]["t"]["overrides"] = {"search": {"grda": {"c": 0.1}}, "train": {"lr": 0.5}}
    raw["datasets"]["u"] = {**MINIMAL["datasets"]["t"]}
    raw["search"] = {"grda": {"mu": 0.8}, "max_order": 2}
    chosen = parse_params(raw)
    assert chosen.search.grda.c == 0.1 and chosen.search.grda.mu == 0.8  # merged, not replaced
    assert chosen.search.max_order == 2 and chosen.train.lr == 0.5
    other = parse_params({**raw, "dataset": "u"})
    assert other.search.grda.c == 0.05 and other.train.lr != 0.5
    # `dvc exp run -S datasets.t.overrides.search.grda.c=0.2` edits the preset's own value
    path = write(tmp_path, raw)
    assert load_params(path, {"datasets.t.overrides.search.grda.c": 0.2}).search.grda.c == 0.2
    assert load_params(ROOT / "params.yaml", {"dataset": "movielens_100k"}).search.grda.c == 0.1


def test_a_bad_preset_override_is_named(tmp_path: Path) -> None:
    import copy

    raw = copy.deepcopy(MINIMAL)
    raw["datasets"]["t"]["overrides"] = {"serach": {"grda": {"c": 0.1}}}
    with pytest.raises(ConfigError, match=r"datasets\.t\.overrides\.serach: not a section"):
        parse_params(raw)
    raw["datasets"]["t"]["overrides"] = {"search": {"grda": {"cc": 0.1}}}
    with pytest.raises(ConfigError, match=r"(?s)search\.grda\.cc: unknown key.*datasets\.t\.overrides"):
        parse_params(raw)


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["--seed", "3"], 2)])
def test_a_stage_refuses_arguments_instead_of_running(tmp_path: Path, argv: list[str], code: int) -> None:
    """Stages read params.yaml only: `python -m tasks.generate --help` used to run the whole stage."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tasks.generate", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code
    assert "usage: python -m tasks.generate" in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing generated


def test_exponent_floats_are_floats_as_dvc_writes_them(tmp_path: Path) -> None:
    """`dvc exp run -S key=0.00001` writes 1e-05, which YAML 1.1 (PyYAML's default) reads as a string: a model's
    free-form hyper-parameter then reached the model as "1e-05" and failed mid-training."""
    from dvc.utils.hydra import apply_overrides

    from tasks.config import read_yaml

    assert read_yaml("a: 1e-5\nb: -2E+3\nc: 1.0e-5\nd: '1e-5'\ne: 12e\nf: 2024") == {
        "a": 1e-5, "b": -2000.0, "c": 1e-5, "d": "1e-5", "e": "12e", "f": 2024}
    raw = {**MINIMAL, "baselines": {"models": {"fm": {"embedding_l2": 0.001}}}}
    path = write(tmp_path, raw)
    apply_overrides(path, ["baselines.models.fm.embedding_l2=0.00001"])
    assert "1e-05" in path.read_text()  # what DVC's writer gives, so the case is real
    value = load_params(path).baselines.hyperparameters("fm")["embedding_l2"]
    assert isinstance(value, float) and value == 1e-5


def test_yes_and_no_labels_survive_dvcs_writer(tmp_path: Path) -> None:
    """A label spec `positive: ["yes"]` came back from `dvc exp run -S ...` as `[yes]` (YAML 1.2 needs no quotes
    there), which YAML 1.1 reads as True: the stage then stopped with "Input should be a valid string"."""
    from dvc.utils.hydra import apply_overrides

    raw = {**MINIMAL, "datasets": {"t": {"paths": ["x.csv"], "format": "csv", "columns": {
        "clicked": {"kind": "label", "positive": ["yes"], "negative": ["no"]},
        "device": {"kind": "categorical"}}}}}
    path = write(tmp_path, raw)
    apply_overrides(path, ["dataset=t"])  # any -S: DVC rewrites the whole file
    assert "'yes'" not in path.read_text() and '"yes"' not in path.read_text()  # unquoted now: the case is real
    label = load_params(path).datasets["t"].columns["clicked"]
    assert label.positive == ["yes"] and label.negative == ["no"]


def test_plain_scalars_read_as_dvc_reads_them() -> None:
    """Every plain scalar that YAML 1.1 and 1.2 read differently, against DVC's own reader; dates stay strings."""
    from dvc.utils.serialize import parse_yaml

    from tasks.config import read_yaml

    doc = ("bools: [yes, no, on, off, y, n, Yes, NO, true, False]\ntime: 12:30\n"
           "ints: [010, 0o17, 0x1f, 0b101, -3, +4, 1_000]\nfloats: [1e-5, 2.5e3, .5, 1., -.inf, .nan]\n"
           "nulls: [~, null]\nquoted: ['1e-5', 'yes']\nbase: &b {x: 1}\nmerged: {<<: *b, y: 2}\n")
    ours, dvcs = read_yaml(doc), parse_yaml(doc, "params.yaml")
    assert repr(ours) == repr(dvcs)  # repr: nan != nan
    assert ours["bools"][:2] == ["yes", "no"] and ours["time"] == "12:30" and ours["ints"][0] == 10
    assert read_yaml("d: 2024-01-02") == {"d": "2024-01-02"}


def test_a_key_given_twice_is_an_error_with_its_line(tmp_path: Path) -> None:
    """DVC refuses a params.yaml with a key given twice ("found duplicate key"); PyYAML kept the last value, so the
    stages ran on a spec that `dvc repro` would not even read. A merge's keys may still be set again."""
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    from tasks.config import read_yaml

    text = ("dataset: t\ndatasets:\n  t:\n    paths: [x.tsv]\n    format: tsv\n    columns:\n"
            "      label: {kind: label, positive: ['1']}\n      site: categorical\n      ad: categorical\n"
            "      site: numeric\n")
    with pytest.raises(YAMLFileCorruptedError):
        parse_yaml(text, "params.yaml")  # DVC's reader: the case is real
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"not valid YAML: found duplicate key 'site' on line 10 \(first on line 8\)"):
        load_params(path)
    assert read_yaml("base: &b {x: 1}\nmerged: {<<: *b, x: 2}")["merged"] == {"x": 2}


@pytest.mark.parametrize("key", [{"header": True}, {"separator": ";"}, {"encoding": "latin1"}, {"quoting": False}])
def test_text_settings_on_a_parquet_log_are_named(key: dict) -> None:
    spec = {"paths": ["x.parquet"], "format": "parquet", "columns": {"label": {"kind": "label", "positive": ["1"]}},
            **key}
    with pytest.raises(ConfigError, match=rf"datasets\.t.*{next(iter(key))}: for text logs only"):
        parse_params({"dataset": "t", "datasets": {"t": spec}})


def test_a_device_this_machine_lacks_is_named_when_params_are_read() -> None:
    """`train.device: cuda` on a CPU-only torch stopped the first training stage with torch's AssertionError."""
    import torch

    from tests.conftest import tiny_params

    columns = {"y": {"kind": "label", "positive": ["1"], "negative": ["0"]}, "a": "categorical"}
    with pytest.raises(ConfigError, match=r"train\.device: 'gpu' is not a torch device"):
        tiny_params(columns, Path("log.tsv"), train={"device": "gpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device: device 'cuda'.*use device: auto"):
            tiny_params(columns, Path("log.tsv"), train={"device": "cuda"})
    assert tiny_params(columns, Path("log.tsv"), train={"device": "cpu"}).train.device == "cpu"
