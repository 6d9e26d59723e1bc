"""Typed view of ``params.yaml``.

Every stage reads its slice of the params through these models, so a wrong type, an unknown key or a
missing required key stops the pipeline before any data is touched, with a message that names the key
and the file. Dataset specs are plain data: a user describes their own log here without touching code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

PARAMS_FILE = Path("params.yaml")

ColumnKind = Literal["label", "categorical", "numeric", "multi_valued", "timestamp", "flag", "drop"]
TimeDerivation = Literal["hour", "weekday", "weekend", "day", "month"]


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema, which is what DVC reads and writes (ruamel.yaml).

    PyYAML resolves plain scalars by YAML 1.1, and ``dvc exp run -S`` rewrites params.yaml by YAML 1.2, dropping the
    quotes a 1.2 reader does not need. Where the two disagree a value changed type between DVC and the stages:
    ``1e-05`` (DVC's float) was the string "1e-05" and a model failed mid-training; a label's ``positive: ["yes"]``
    came back as ``[yes]``, which YAML 1.1 reads as ``True``; ``no``, ``on``, ``off``, ``y``, ``n`` likewise, and
    ``12:30`` was the sexagesimal int 750. Here only ``true``/``false`` are booleans, ints and floats are 1.2's, and
    dates stay strings (the params take none).
    """

    @staticmethod
    def _int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
        text = str(loader.construct_scalar(node)).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        text = text.lstrip("+-")
        for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
            if text.startswith(prefix):
                return sign * int(text[2:], base)
        return sign * int(text)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A mapping that names a key twice is an error, as in DVC's reader: PyYAML would keep the last value and
        the stages would run with params other than those DVC refuses. A key given by a merge (``<<: *base``)
        may still be set again: that is what a merge is for."""
        seen: dict[Any, int] = {}  # key -> the line it is first given on
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeConstructor's own error names it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r} on line {line} (first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {}  # a class attribute of its own: SafeLoader's stay as they are
for _tag, _pattern, _first in (
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("bool", r"true|True|TRUE|false|False|FALSE", list("tTfF")),
    ("int", r"[-+]?0b[01_]+|[-+]?0o[0-7_]+|[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+", list("-+0123456789")),
    ("float", r"[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
              r"|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)", list("-+0123456789.")),
    ("merge", r"<<", ["<"]),
):
    _Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), _first)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader._int)


def read_yaml(text: str) -> Any:
    """A YAML document as Python data, its plain scalars read by YAML 1.2 as DVC reads them (``_Loader``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The kinds each of ColumnSpec's keys acts on: set on a column of another kind, a key would do nothing.
_KIND_OF_KEY: dict[str, tuple[ColumnKind, ...]] = {
    "positive": ("label",), "negative": ("label",), "threshold": ("label",),
    "bucketing": ("numeric",), "buckets": ("numeric",),
    "prefix": ("categorical",),
    "separator": ("multi_valued",), "max_length": ("multi_valued",),
    "time_format": ("timestamp",), "derive": ("timestamp",),
    "field": ("flag",),
    # a label or flag value outside its mapping is kept aside, so a marker has nothing to mean there
    "missing_values": ("numeric", "categorical", "timestamp", "multi_valued"),
}


class ColumnSpec(Strict):
    """One column of a raw file, in file order. ``kind`` says what the pipeline does with it."""

    kind: ColumnKind
    # label: raw values that mean a click / no click, or a numeric threshold (value >= threshold -> 1)
    positive: list[str] | None = None
    negative: list[str] | None = None
    threshold: float | None = None
    # numeric: how values become buckets (each bucket is then a categorical token)
    bucketing: Literal["criteo_log", "quantile", "identity"] = "identity"
    buckets: Annotated[int, Field(ge=2, le=4096)] = 10
    # categorical: keep only the first `prefix` characters (e.g. a zip-code prefix)
    prefix: Annotated[int, Field(ge=1)] | None = None
    # multi_valued: a separated list of tokens in one column
    separator: str = "|"
    max_length: Annotated[int, Field(ge=1)] = 8
    # timestamp: "unix" seconds, "unix_ms" milliseconds or a strptime format (Avazu: "%y%m%d%H"), and the fields
    # derived from it
    time_format: str = "unix"
    derive: list[TimeDerivation] = ["hour", "weekday", "weekend"]
    # flag: a 0/1 column that becomes one token of the multi-valued field named here
    field: str | None = None
    # numeric, categorical, timestamp, multi_valued: this column's missing-value markers, in place of the dataset's
    # `missing_values` (e.g. an age column where 0 means unknown, in a log where 0 is a real value elsewhere)
    missing_values: list[str] | None = None

    @field_validator(*_KIND_OF_KEY)
    @classmethod
    def _applies(cls, value: Any, info: ValidationInfo) -> Any:
        """A key of another kind is an error (``bucketing`` on a categorical column did nothing, silently). A
        ``drop`` column may keep its settings, so that a column is dropped and brought back by its kind alone."""
        kind, key = info.data.get("kind"), info.field_name
        assert key is not None
        kinds = _KIND_OF_KEY[key]
        if value is not None and kind is not None and kind not in (*kinds, "drop"):
            named = " and ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
            raise ValueError(f"applies to {named} columns only; this column is {kind}")
        if key == "buckets" and kind == "numeric" and info.data.get("bucketing") != "quantile":
            raise ValueError(f"applies to `bucketing: quantile` only; this column's bucketing is "
                             f"{info.data.get('bucketing')}")
        return value

    @field_validator("negative")
    @classmethod
    def _disjoint(cls, negative: list[str] | None, info: ValidationInfo) -> list[str] | None:
        """A value in both lists was read as no click, silently (ingest's mapping lets `negative` win)."""
        both = sorted(set(negative or []) & set(info.data.get("positive") or []))
        if both:
            raise ValueError(f"{both} also in `positive`: a raw value is a click or not, never both")
        return negative

    @field_validator("threshold")
    @classmethod
    def _one_rule(cls, threshold: float | None, info: ValidationInfo) -> float | None:
        """ingest reads the threshold when there is one: `positive`/`negative` beside it would be ignored."""
        given = [k for k in ("positive", "negative") if info.data.get(k) is not None]
        if threshold is not None and given:
            raise ValueError(f"give a `threshold` or `positive`/`negative` values, not both (`{'`, `'.join(given)}` "
                             f"set too)")
        return threshold

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.kind == "label" and self.threshold is None and not self.positive:
            raise ValueError("a label column needs `positive` (and `negative`) values, or a `threshold`")
        if self.kind == "flag" and not self.field:
            raise ValueError("a flag column needs `field`: the multi-valued field it belongs to")
        return self


def _expand_columns(raw: Any) -> Any:
    """``{"I{1..13}": spec}`` -> ``{"I1": spec, ..., "I13": spec}``; a bare kind string -> ``{"kind": s}``."""
    if not isinstance(raw, dict):
        return raw
    out: dict[str, Any] = {}
    for name, spec in raw.items():
        spec = {"kind": spec} if isinstance(spec, str) else spec
        match = re.fullmatch(r"(.*)\{(\d+)\.\.(\d+)\}(.*)", str(name))
        names = (
            [f"{match[1]}{i}{match[4]}" for i in range(int(match[2]), int(match[3]) + 1)]
            if match
            else [str(name)]
        )
        for n in names:
            if n in out:
                raise ValueError(f"column {n!r} is declared twice")
            out[n] = spec
    return out


class JoinSpec(Strict):
    """A side table joined onto the main rows by a key column (e.g. MovieLens u.user on `user`)."""

    path: str
    separator: str = "\t"
    quoting: bool = False  # fields in double quotes, as DatasetSpec.quoting
    header: bool = False
    encoding: Literal["utf8", "latin1"] = "utf8"
    key: str
    columns: dict[str, ColumnSpec]

    _expand = field_validator("columns", mode="before")(_expand_columns)

    @model_validator(mode="after")
    def _key_present(self) -> JoinSpec:
        if self.key not in self.columns:
            raise ValueError(f"join key {self.key!r} is not one of this table's columns")
        if self.quoting and len(self.separator) != 1:
            raise ValueError(f"quoting: true needs a one-character separator (got {self.separator!r})")
        return self

    @property
    def quote(self) -> str | None:
        return '"' if self.quoting else None


class ImplicitSpec(Strict):
    """An implicit-feedback log (every row a positive): sample negatives as the AFM/NFM papers did.

    Each logged row gets ``negatives`` extra rows with the same user and context but an item this user
    never used; the item's own attributes (``item_columns``) travel with the sampled item.
    """

    user: str
    item: str
    negatives: Annotated[int, Field(ge=1)] = 2
    item_columns: list[str] = []


LABEL_COLUMN = "label"  # tasks.common.LABEL: the label's name in rows.parquet and the encoded splits, whatever its own

# Columns that ingest adds to a block's frame while it parses and types it (tasks/ingest.py): a declared column of
# the same name was overwritten or stopped ingest with Polars' DuplicateError. rejected.parquet's own columns (file,
# line, reason, detail, raw) are a table apart, and clash with nothing.
INGEST_COLUMNS = {
    "line": "a line's text on the general parse path",
    "undecodable": "whether a line is valid UTF-8",
    "_line": "a row's line number",
    "_reason": "a row's first failed check",
    "_n_fields": "a line's number of fields",
    "_unbalanced": "whether a line's quotes close",
    "_no_colon": "whether a libfm line has a token without ':'",
    "_used": "negative sampling's mark of the items a user used",
}


def derived_field_name(column: str, part: str) -> str:
    """The encoded field that a timestamp column's ``derive`` part becomes: ``ts`` and ``hour`` -> ``ts_hour``."""
    return f"{column}_{part}"


def _claim(names: dict[str, str], name: str, where: str, owner: str, label: str, why: str) -> None:
    """``names[name] = owner``, or an error at ``where`` if another key has it."""
    other = names.setdefault(name, owner)
    if other == label:
        raise ValueError(f"{where}: {name!r} is the name of {label}; give this column another name")
    if other != owner:
        raise ValueError(f"{where}: {name!r} clashes with {other}: {why}; give one of them another name, or "
                         f"`kind: drop`")


def _check_join_key(prefix: str, column: ColumnSpec, key: str, rows: dict[str, str], kinds: dict[str, ColumnKind],
                    ) -> None:
    """A join key must be a column of the rows it joins (the main log's, or an earlier join's), of the same kind:
    a number and a string stopped the join with Polars' SchemaError."""
    kind = kinds.get(key)
    if kind is None or kind in ("label", "flag"):
        raise ValueError(f"{prefix.removesuffix('.columns')}.key: {key!r} is not a column of the rows it joins "
                         f"(the main log's columns and earlier joins'); declare it there, with the same kind")
    if column.kind != kind:
        raise ValueError(f"{prefix}.{key}.kind: the join key is {column.kind} here and {kind} in {rows[key]}; "
                         f"declare it with one kind in both")


class DatasetSpec(Strict):
    """How to read one raw click log and what each of its columns is."""

    description: str = ""
    paths: Annotated[list[str], Field(min_length=1)]
    format: Literal["tsv", "csv", "libfm", "parquet"]
    separator: str | None = None  # default: tab for tsv, comma for csv, '|' allowed for anything
    # Fields in double quotes (RFC 4180: a separator inside, a quote doubled) as spreadsheets and databases write
    # them; default: on for csv, off for tsv (whose logs carry quotes as text). A field may not span lines.
    quoting: bool | None = None
    header: bool | Literal["auto"] = False
    encoding: Literal["utf8", "latin1"] = "utf8"
    # Texts that mean "no value" in this export besides an empty field (R writes NA, Hive \N): in a numeric,
    # categorical or timestamp field they are missing, in a multi-valued one the token is dropped; joins too. In a
    # numeric column a marker that is a number matches by value (-1 matches -1.0). A column's own
    # `missing_values` replaces this list for that column.
    missing_values: list[str] = []
    columns: dict[str, ColumnSpec]
    joins: list[JoinSpec] = []
    implicit: ImplicitSpec | None = None
    # This preset's own settings over the top-level sections, nested as they are (e.g. search: {grda: {c: 0.1}});
    # applied when the preset is the chosen dataset (parse_params).
    overrides: dict[str, Any] = {}

    _expand = field_validator("columns", mode="before")(_expand_columns)

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        labels = [n for n, c in self.columns.items() if c.kind == "label"]
        if self.implicit is None and len(labels) != 1:
            raise ValueError(f"exactly one column must have kind 'label' (found {labels or 'none'})")
        if self.implicit is not None and labels:
            raise ValueError("an implicit-feedback log has no label column: labels come from sampling")
        if self.format == "libfm" and self.header is not False:
            raise ValueError("libfm files have no header")
        if self.format == "libfm" and self.quoting:
            raise ValueError("libfm files have no quoted fields: leave `quoting` out")
        if self.format == "parquet":  # columns come by name and type from the file: the text settings do nothing
            given = [key for key in ("separator", "quoting", "header", "encoding") if key in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)}: for text logs only; a Parquet file's columns are read by name")
        if self.quoting and len(self.sep) != 1:
            raise ValueError(f"quoting: true needs a one-character separator (got {self.sep!r})")
        if self.implicit is not None:
            for col in [self.implicit.user, self.implicit.item, *self.implicit.item_columns]:
                if col not in self.columns:
                    raise ValueError(f"implicit: column {col!r} is not declared in `columns`")
        self._check_names()
        return self

    def _check_names(self) -> None:
        """Each column of rows.parquet and each encoded field comes from one key of the spec, and each join key is a
        column of the rows it joins, of the same kind. A clash stopped ingest with a Polars error that named no key,
        or passed silently: a side table's `device` beside the main log's became `device_right`, which no field
        reads, and a raw `ts_hour` beside the field that `ts` derives left encode one of the two.

        Errors start with the key (``joins.0.columns.device: ...``), which ``_format_error`` appends to the dataset's.
        """
        label = "the label (rows.parquet and the encoded splits call it 'label', whatever its name in the log)"
        rows: dict[str, str] = {LABEL_COLUMN: label}  # rows.parquet column -> the key it comes from
        kinds: dict[str, ColumnKind] = {LABEL_COLUMN: "label"}  # rows.parquet column -> its kind
        fields: dict[str, str] = {LABEL_COLUMN: label}  # encoded split column -> the key it comes from
        tables = [("columns", self.columns, None)]
        tables += [(f"joins.{i}.columns", j.columns, j.key) for i, j in enumerate(self.joins)]
        for prefix, columns, key in tables:
            if key is not None:
                _check_join_key(prefix, columns[key], key, rows, kinds)
            for name, col in columns.items():
                where = f"{prefix}.{name}"
                for own in (name, col.field if col.kind == "flag" else None):
                    if own in INGEST_COLUMNS:
                        raise ValueError(f"{where}: {own!r} is the name of ingest's own column for "
                                         f"{INGEST_COLUMNS[own]}; give this column another name")
                if name == key or col.kind == "drop":
                    continue  # a join key is in the rows already (encode's plan_fields skips it too)
                if col.kind == "label":
                    if key is not None:
                        raise ValueError(f"{where}: a side table cannot hold the label (the main log's columns do)")
                    continue
                if col.kind == "flag":  # a table's flags of one field make one column: the first flag's key owns it
                    assert col.field is not None
                    out = col.field
                    owner = next(f"{prefix}.{n}.field" for n, c in columns.items() if c.kind == "flag"
                                 and c.field == out)
                    outputs = {out: owner}
                else:
                    out, owner = name, where
                    outputs = ({derived_field_name(name, d): f"{where}.derive" for d in col.derive}
                               if col.kind == "timestamp" else {name: where})
                other = rows.get(out, owner)
                joined = key is not None and not other.startswith(f"{prefix}.")
                _claim(rows, out, where, owner, label, f"the join would keep this table's as {out + '_right'!r}, "
                       f"which no field reads" if joined else "the rows cannot hold two columns of one name")
                kinds[out] = col.kind
                for field, field_owner in outputs.items():
                    _claim(fields, field, where, field_owner, label, "encode would make two fields of one name")

    @property
    def sep(self) -> str:
        if self.separator is not None:
            return self.separator
        return {"tsv": "\t", "csv": ",", "libfm": " "}.get(self.format, "\t")

    @property
    def quote(self) -> str | None:
        """The quote character the reader honours, or None."""
        on = self.format == "csv" and len(self.sep) == 1 if self.quoting is None else self.quoting
        return '"' if on else None

    @property
    def label_column(self) -> str:
        return next((n for n, c in self.columns.items() if c.kind == "label"), "label")


class GenerateConfig(Strict):
    """The embedded synthetic click log (Criteo TSV format, planted interactions)."""

    rows: Annotated[int, Field(ge=100)] = 200_000
    seed: int = 7
    numeric_fields: Annotated[int, Field(ge=1, le=13)] = 13
    categorical_fields: Annotated[int, Field(ge=4, le=26)] = 26
    planted_pairs: Annotated[int, Field(ge=0)] = 4
    planted_triples: Annotated[int, Field(ge=0)] = 2
    interaction_strength: float = 1.2
    noise: Annotated[float, Field(ge=0)] = 0.3
    base_rate: Annotated[float, Field(gt=0, lt=1)] = 0.25
    out_dir: str = "data/raw/synthetic"


class IngestConfig(Strict):
    block_mb: Annotated[int, Field(ge=1, le=4096)] = 16


class SplitConfig(Strict):
    method: Literal["random", "time"] = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    column: str | None = None  # the timestamp column for method: time

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: tuple[float, float, float]) -> tuple[float, float, float]:
        """Train, valid and test each need rows: an empty split stopped validate and training far from this key."""
        if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
            raise ValueError(f"train, valid and test fractions must each be above 0 and sum to 1 "
                             f"(got {list(fractions)})")
        return fractions

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.method == "time" and not self.column:
            raise ValueError("split method 'time' needs `column`: the timestamp column to order by")
        return self


class EncodeConfig(Strict):
    split: SplitConfig = SplitConfig()
    min_count: Annotated[int, Field(ge=1)] = 2


class ValidateConfig(Strict):
    positive_ratio_tolerance: Annotated[float, Field(gt=0, le=1)] = 0.05
    max_rejected_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05


class TrainSection(Strict):
    """How every training stage trains (aim.train.TrainConfig); the seed is the top-level ``seed``."""

    epochs: Annotated[int, Field(ge=1)] = 100
    batch_size: Annotated[int, Field(ge=1)] = 4096
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    patience: Annotated[int, Field(ge=1)] = 2
    min_epochs: Annotated[int, Field(ge=0)] = 0
    min_delta: Annotated[float, Field(ge=0)] = 1e-5
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_lr: Annotated[float, Field(ge=0)] = 1e-6
    lr_decay_patience: Annotated[int, Field(ge=1)] = 1
    grad_clip: Annotated[float, Field(gt=0)] | None = 10.0
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_batch_size: Annotated[int, Field(ge=1)] = 65536
    restore_best: bool = True  # end with the best epoch's weights (a search reads its gates at the last epoch)

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str) -> str:
        """A device this machine has, checked when params.yaml is read: `cuda` on a CPU-only torch failed with an
        AssertionError at the first training stage's first tensor."""
        if device == "auto" or device == "cpu":
            return device
        from aim.train import resolve_device  # torch: imported only for a device other than auto and cpu

        try:
            resolve_device(device)
        except RuntimeError as err:  # torch.device("gpu"): not a device string
            raise ValueError(f"{device!r} is not a torch device ({str(err).splitlines()[0]})") from None
        return device

    @model_validator(mode="after")
    def _decay_before_stop(self) -> TrainSection:
        """A decay that waits as long as patience never happens: training stops first."""
        if self.lr_decay < 1 and 1 < self.lr_decay_patience >= self.patience:
            raise ValueError(f"lr_decay_patience {self.lr_decay_patience} >= patience {self.patience}: training "
                             f"would stop before the learning rate ever decays (raise patience, or set lr_decay: "
                             f"1.0 to train without decay)")
        return self


S = TypeVar("S", bound=BaseModel)


def overlay(section: S, overrides: dict[str, Any], where: str) -> S:
    """``section`` with ``overrides`` on top, validated like the rest; an error names ``where`` in params.yaml.
    (Params checks every overlay a stage makes when params.yaml is read, so this error is a last guard.)"""
    try:
        return type(section).model_validate(section.model_dump() | overrides)
    except ValidationError as err:
        problems = "; ".join(_under(where, e) for e in err.errors())
        raise ConfigError(f"params.yaml: {problems}") from None


def _check_train_keys(overrides: Any, where: str) -> dict[str, Any]:
    """A ``train:`` override inside another section: a mapping of known TrainSection keys."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{where} must be a mapping of train settings")
    unknown = sorted(set(overrides) - set(TrainSection.model_fields))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (train takes {sorted(TrainSection.model_fields)})")
    return overrides


class TrainOverridable(Strict):
    """A section with a ``train:`` key that changes how its stage trains (checked against TrainSection)."""

    train: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check_train(self) -> TrainOverridable:
        _check_train_keys(self.train, "train")
        return self


class GRDASection(Strict):
    """GRDA for the gates: l1(t) = c * sqrt(lr) * (lr * t)^mu; larger c or mu prune more.

    ``reference_steps``: the search length (steps) that ``c`` was chosen for. A search of T steps then uses
    c * (reference_steps / T)^mu, so that it ends at the same threshold on a small log as on a large one.
    """

    lr: Annotated[float, Field(gt=0)] = 0.1
    c: Annotated[float, Field(ge=0)] = 0.05
    mu: Annotated[float, Field(ge=0, lt=1)] = 0.9
    reference_steps: Annotated[int, Field(ge=1)] | None = None  # None: c as it is (aim.search.length_scaled_c)


InteractionFunctionName = Literal["inner", "outer", "vector_kernel", "scalar_kernel"]


class SearchConfig(TrainOverridable):
    """search_interaction: which interactions (FIS) and functions (IFS) to keep, order by order."""

    mode: Literal["fis", "fis_ifs"] = "fis_ifs"
    functions: list[InteractionFunctionName] = ["inner", "outer", "vector_kernel", "scalar_kernel"]
    max_order: Annotated[int, Field(ge=2, le=4)] = 3
    top_k: Annotated[int, Field(ge=1)] | None = None  # field sets of order p-1 that seed order p; None: n // 2
    embedding_dim: Annotated[int, Field(ge=1)] = 10
    embedding_l2: Annotated[float, Field(ge=0)] = 0.001
    gate_init: float = 0.5
    grda: GRDASection = GRDASection()

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if not self.functions:
            raise ValueError("functions: name at least one interaction function")
        return self

    @property
    def searched_functions(self) -> list[str]:
        """AutoFIS (``fis``) searches pairs under the inner product only."""
        return ["inner"] if self.mode == "fis" else list(dict.fromkeys(self.functions))


class SearchEmbedConfig(TrainOverridable):
    """search_embed: gates per field x embedding dimension (EDS), with the selected interactions fixed."""

    enabled: bool = True  # false: retrain keeps every dimension (search_embed still writes the full sizes)
    dim_gate_init: float = 1.0
    embedding_l2: Annotated[float, Field(ge=0)] = 0.001
    grda: GRDASection = GRDASection()


class RetrainConfig(TrainOverridable):
    """retrain: the selected interactions x functions x dimensions, gates as attention weights, plus an MLP."""

    hidden_units: list[Annotated[int, Field(ge=1)]] = [400, 400, 400]
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.3
    batch_norm: bool = True
    embedding_l2: Annotated[float, Field(ge=0)] = 0.05


class BaselinesConfig(Strict):
    """The classic models trained on the encoded data: name (as registered in aim.models) -> hyper-parameters.

    ``embedding_dim`` and ``embedding_l2`` apply to every model unless its own entry sets them.
    """

    embedding_dim: Annotated[int, Field(ge=1)] = 10
    embedding_l2: Annotated[float, Field(ge=0)] = 0.0
    models: dict[str, dict[str, Any] | None] = {}

    def hyperparameters(self, model: str) -> dict[str, Any]:
        """The shared settings overlaid with the model's own entry (its ``train`` key left out)."""
        own = {k: v for k, v in (self.models.get(model) or {}).items() if k != "train"}
        return {"embedding_dim": self.embedding_dim, "embedding_l2": self.embedding_l2, **own}

    def train_overrides(self, model: str) -> dict[str, Any]:
        """``train`` settings this model changes (e.g. ``fm: {train: {lr: 0.01}}``)."""
        return dict((self.models.get(model) or {}).get("train") or {})

    @model_validator(mode="after")
    def _check_models(self) -> BaselinesConfig:
        """Model names and hyper-parameter keys are checked here, when params.yaml is read, so that a typo
        stops the first stage `dvc repro` runs, not the training stage that reaches it minutes later."""
        from aim.models import MODELS, hyperparameters  # torch: imported only when a section lists models

        for name, entry in self.models.items():
            if name not in MODELS:
                raise ValueError(f"models.{name}: unknown model; registered models: {sorted(MODELS)}")
            entry = entry or {}
            known = hyperparameters(name)
            unknown = sorted(set(entry) - set(known) - {"train"})
            if unknown:
                raise ValueError(f"models.{name}.{unknown[0]}: unknown hyper-parameter of {name} "
                                 f"(it takes {sorted(known)} and train)")
            dim = entry.get("embedding_dim", self.embedding_dim)
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise ValueError(f"models.{name}.embedding_dim: must be a whole number >= 1, got {dim!r}")
            _check_train_keys(entry.get("train"), f"models.{name}.train")
        return self


class Params(Strict):
    """The whole of params.yaml; an unknown top-level key (a misspelled section) is an error, as within sections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    seed: int = 2024
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    encode: EncodeConfig = EncodeConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    train: TrainSection = TrainSection()
    baselines: BaselinesConfig = BaselinesConfig()
    search: SearchConfig = SearchConfig()
    search_embed: SearchEmbedConfig = SearchEmbedConfig()
    retrain: RetrainConfig = RetrainConfig()
    autofis: dict[str, Any] = {"mode": "fis"}  # AutoFIS = `search` with these keys changed (its order: search's)
    transfer: BaselinesConfig = BaselinesConfig()  # DeepFM+IF, IPNN+IF: baselines given the searched set
    datasets: dict[str, DatasetSpec]

    @model_validator(mode="after")
    def _dataset_known(self) -> Params:
        if self.dataset not in self.datasets:
            raise ValueError(f"dataset {self.dataset!r} is not one of datasets: {sorted(self.datasets)}")
        return self

    @model_validator(mode="after")
    def _stage_train_settings_valid(self) -> Params:
        """Each stage trains with ``train`` and its own ``train:`` keys on top; the combination is checked here, at
        load, so that e.g. a model's ``lr_decay_patience`` against the shared ``patience`` fails before any stage.
        So is the ``autofis`` section, which is ``search`` with its keys on top."""
        try:  # AutoFIS's section is `search` with the `autofis` keys on top: check it now, not when autofis runs
            autofis = SearchConfig.model_validate(self.search.model_dump() | self.autofis)
        except ValidationError as err:
            raise ValueError(_under("autofis", err.errors()[0])) from None
        stages = {"search.train": self.search.train, "search_embed.train": self.search_embed.train,
                  "retrain.train": self.retrain.train, "autofis.train": autofis.train}
        for section in ("baselines", "transfer"):
            for model in getattr(self, section).models:
                stages[f"{section}.models.{model}.train"] = getattr(self, section).train_overrides(model)
        for where, overrides in stages.items():
            try:
                TrainSection.model_validate(self.train.model_dump() | overrides)
            except ValidationError as err:
                raise ValueError(_under(where, err.errors()[0])) from None
        return self

    @property
    def spec(self) -> DatasetSpec:
        return self.datasets[self.dataset]


KNOWN_TOP_LEVEL = {field.alias or name for name, field in Params.model_fields.items()}  # params.yaml's sections


def _describe(e: Any) -> tuple[str, str]:
    """One pydantic error as (the params.yaml key it is about, a message), e.g. ("search.train.lr", "unknown key")."""
    # A model validator adds its own name to the location ("function-after[_check()]"): not a key.
    key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after[")) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required key is missing"
    elif e["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
        nested = re.match(r"([\w.]+\.[\w.]+): (.*)", msg)  # a validator naming a deeper key
        if nested:
            key, msg = (nested[1] if key == "(top level)" else f"{key}.{nested[1]}"), nested[2]
    return key, msg


def _under(where: str, e: Any) -> str:
    """One pydantic error of a section validated on its own, named from ``where`` in params.yaml."""
    key, msg = _describe(e)
    return f"{where}: {msg}" if key == "(top level)" else f"{where}.{key}: {msg}"


def _format_error(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid configuration"]
    lines += [f"  {key}: {msg}" for key, msg in map(_describe, err.errors())]
    return "\n".join(lines)


PRESET_OVERRIDABLE = KNOWN_TOP_LEVEL - {"dataset", "datasets", "generate"}  # sections a preset may override


def _deep_merge(base: Any, over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in over.items():
        out[key] = _deep_merge(out.get(key), value) if isinstance(value, dict) else value
    return out


def apply_dataset_overrides(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """``raw`` with the chosen preset's ``overrides`` merged over the top-level sections they name.

    A preset's overrides win over the sections: a preset carries what its data needs (ml-100k's GRDA ``c``), and
    ``datasets.<name>.overrides.<key>`` is where to change them, also with ``dvc exp run -S``."""
    spec = (raw.get("datasets") or {}).get(raw.get("dataset"))
    overrides = spec.get("overrides") if isinstance(spec, dict) else None
    if not overrides:
        return raw
    where = f"datasets.{raw['dataset']}.overrides"
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping of sections, got {type(overrides).__name__}")
    bad = sorted(set(overrides) - PRESET_OVERRIDABLE)
    if bad:
        raise ConfigError(f"{path}: {where}.{bad[0]}: not a section a preset can override "
                          f"(one of: {sorted(PRESET_OVERRIDABLE)})")
    return _deep_merge(raw, overrides)


def parse_params(raw: dict[str, Any], path: Path | str = PARAMS_FILE) -> Params:
    """Validate an already-loaded params mapping; errors name ``path`` and the offending key (the chosen
    preset's ``overrides`` applied first)."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    merged = apply_dataset_overrides(raw, path)
    try:
        return Params.model_validate(merged)
    except ValidationError as err:
        message = _format_error(err, path)
        if merged is not raw:
            message += (f"\n  (sections {sorted(raw['datasets'][raw['dataset']]['overrides'])} include "
                        f"datasets.{raw['dataset']}.overrides)")
        raise ConfigError(message) from None


def load_params(path: Path | str = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml (``overrides`` are dotted keys, as ``dvc exp run -S`` takes them)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the project root)")
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return parse_params(raw, path)


def resolve_path(p: str, base: Path | None = None) -> Path:
    """Paths in params are relative to the project root (where dvc runs)."""
    path = Path(p)
    return path if path.is_absolute() or base is None else base / path
