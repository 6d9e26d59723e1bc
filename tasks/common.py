"""What every stage shares: where files live, how metrics are written, how a stage fails.

Stages run from the project root (DVC's working directory); every path below is relative to it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.config import ConfigError, Params, load_params

INTERIM = Path("data/interim")
ROWS = INTERIM / "rows.parquet"
REJECTED = INTERIM / "rejected.parquet"
# The end of a rejected line's detail whose value looks like R's NA or Hive's \N (ingest writes it, validate counts it)
MARKER_HINT = " (a missing-value marker? list it in the dataset's `missing_values`)"
MANIFEST = INTERIM / "manifest.json"  # what ingest read (files, checksums) and wrote (columns), and for which dataset
ENCODED = Path("data/encoded")
SPLITS = ("train", "valid", "test")
FEATURE_MAP = ENCODED / "feature_map.json"
VOCAB = ENCODED / "vocab.parquet"
METRICS = Path("metrics")
REPORTS = Path("reports")
PREDICTIONS = REPORTS / "predictions"  # each trained model's test-split probabilities, for evaluate's ROC curves
GATES = Path("gates")  # what the searches keep

# Reserved codes of every field's vocabulary; real values start at FIRST_CODE.
PADDING, OOV, MISSING = 0, 1, 2
FIRST_CODE = 3
LABEL = "label"


class StageError(RuntimeError):
    """A stage cannot go on (bad input, failed gate). The message is what the user sees."""


def check_same_dataset(path: Path, found: str | None, dataset: str) -> None:
    """Refuse ``path``, an earlier stage's output, when it was made from another dataset than params.yaml's.

    DVC reruns whatever a change of ``dataset`` invalidates, but a stage run alone (``python -m tasks.<stage>``)
    would read what the last run of the stage before it left, quietly: rows of one log under another's spec.
    """
    if found is not None and found != dataset:
        raise StageError(f"{path} was made from dataset {found!r}, but params.yaml has dataset {dataset!r}: run the "
                         f"stages before this one again (dvc repro)")


# Each gate file and the stage that writes it
GATE_WRITERS = {"interaction.json": "search_interaction", "embed.json": "search_embed", "autofis.json": "autofis"}


def read_gates(name: str, dataset: str) -> dict[str, Any]:
    """``gates/<name>``, refused when another dataset's search wrote it. The committed gates are the synthetic
    log's: after a ``git checkout gates/`` beside another log's data, a stage run alone would retrain that log
    with them wherever the field names overlap."""
    path = GATES / name
    if not path.exists():
        stage = GATE_WRITERS[name]
        raise StageError(f"{path} not found: run the {stage} stage first (dvc repro {stage})")
    record = read_json(path)
    check_same_dataset(path, record.get("dataset"), dataset)
    return record


def input_path(path: str) -> Path:
    """A raw log or side table named in params.yaml. A relative path is the project's. ``dvc exp run --queue``
    (``tasks.compare``) runs the stages in a copy of the project under .dvc/tmp/exps, where neither ../shared
    nor the git-ignored data/logs is beside it: there a path that is not found is read from the project
    itself, which DVC names in ``DVC_ROOT``."""
    given = Path(path)
    root = os.environ.get("DVC_ROOT")
    if root and not given.is_absolute() and not given.exists() and (Path(root) / given).exists():
        return Path(root) / given
    return given


def split_path(split: str) -> Path:
    return ENCODED / f"{split}.parquet"


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: Path) -> Any:
    if not path.exists():
        raise StageError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def read_json_if_present(path: Path) -> Any:
    """The JSON at ``path``, or None where a stage has not written it (reports that show what exists)."""
    return json.loads(path.read_text()) if path.exists() else None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def check_command_line(usage: str, arguments: int = 0) -> list[str]:
    """The command line's arguments, if there are ``arguments`` of them; else the usage and exit 2 (exit 0 on
    ``-h``/``--help``). A stage reads params.yaml, not its command line: an argument it would ignore (a flag meant
    for something else, ``--help``) must not start a run."""
    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: {usage}")
        sys.exit(0)
    if len(argv) != arguments:
        print(f"usage: {usage}", file=sys.stderr)
        sys.exit(2)
    return argv


def stage_main(run: Callable[[Params], dict[str, Any]], checked: bool = False) -> None:
    """Entry point for ``python -m tasks.<stage>``: load params, run, turn known failures into exit 1.

    ``checked``: the caller has checked the command line (a stage that takes a model name); else it must be empty.
    """
    if not checked:
        module = getattr(sys.modules.get("__main__"), "__spec__", None)
        stage = module.name if module else "tasks.<stage>"
        check_command_line(f"python -m {stage}   (no arguments: it reads params.yaml in the working directory)")
    try:
        run(load_params())
    except (ConfigError, StageError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def progress_enabled() -> bool:
    """Progress bars only on a terminal (DVC and CI logs stay clean)."""
    return sys.stderr.isatty() and not os.environ.get("CI")
