"""W&B tracking for the training stages: config, per-epoch curves, test metrics and gate tables.

Every training run of a stage is one W&B run: its job type is the stage, it is tagged with the stage and the
dataset, and it is grouped by the DVC experiment (or by a hash of the whole params), so the W&B UI compares
test AUC across configs. Runs are written offline unless an API key is set; ``wandb sync <dir>`` uploads them.
``WANDB_MODE=disabled`` (the tests) gives a tracker that does nothing and never imports wandb.

The training loop (``aim/``) knows nothing of this: metrics enter through ``TrackerCallback``, a callback of
``aim.train.Trainer``, and the stages log the rest through the small ``Tracker`` interface.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tasks.common import StageError
from tasks.config import Params

if TYPE_CHECKING:  # only for annotations: keeps this module cheap to import
    from wandb.sdk.wandb_run import Run

    from aim.train import EpochRecord, TrainConfig, Trainer

PROJECT = "aim-pipeline"
MODES = ("online", "offline", "disabled", "dryrun", "shared")  # what wandb.init takes ("dryrun" = offline)
EPOCH_KEYS = ("train_loss", "valid_auc", "valid_logloss", "lr", "seconds", "samples_per_second")
INTERACTION_COLUMNS = ["fields", "order", "function", "gate"]
EMBEDDING_COLUMNS = ["field", "size", "kept"]


class Tracker(Protocol):
    """Where a run's metrics go: W&B, nothing, or a test's recorder."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Tracking switched off (``WANDB_MODE=disabled``)."""

    def log(self, values: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One ``wandb.init`` run."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(_plain(values))

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def finish(self, exit_code: int | None = None) -> None:
        self.run.finish(exit_code=exit_code)  # a nonzero code marks the run failed in the UI


def run_root() -> Path:
    """The folder whose ``wandb/`` holds the runs: ``WANDB_DIR``, else the DVC project root, else the cwd.

    DVC sets ``DVC_ROOT`` for stage commands; in a queued ``dvc exp run`` it names the parent repo, not the
    temporary copy the experiment runs in (which is deleted afterwards), so every run lands in the user's repo.
    """
    return Path(os.environ.get("WANDB_DIR") or os.environ.get("DVC_ROOT") or ".").resolve()


def wandb_runs_dir() -> Path:
    """Where offline runs are written (``offline-run-*`` folders), for ``wandb sync`` and comparisons."""
    return run_root() / "wandb"


def mode() -> str:
    """``WANDB_MODE`` if set; else online with an API key, offline without (never a login prompt)."""
    chosen = (os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")).lower()
    if chosen not in MODES:
        raise StageError(f"WANDB_MODE={chosen!r}: expected one of {', '.join(MODES)}")  # a typo, not a traceback
    return chosen


def params_group(params: Params) -> str:
    """The W&B group: the DVC experiment's name, or a hash of the whole params so one config's runs group."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    digest = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    return "params-" + digest.hexdigest()[:8]


def start_run(stage: str, name: str, params: Params, config: dict[str, Any]) -> Tracker:
    """A tracker for one training run of ``stage`` (prefer ``tracked``, which always finishes it)."""
    chosen = mode()
    if chosen == "disabled":
        return NullTracker()  # before importing wandb: the import alone takes a second
    import wandb

    root = run_root()
    root.mkdir(parents=True, exist_ok=True)
    init_args: dict[str, Any] = {
        "project": os.environ.get("WANDB_PROJECT") or PROJECT,
        "dir": str(root),
        "name": name,
        "job_type": stage,
        "group": params_group(params),
        "tags": [stage, params.dataset],
        "config": _plain(config) | {"dataset": params.dataset, "seed": params.seed},
        "settings": wandb.Settings(silent=True, console="off"),  # the stage prints its own progress
    }
    try:
        run = wandb.init(mode=chosen, **init_args)
    except Exception as err:  # no network or a bad key must not cost a training run: keep it on disk
        if chosen != "online":
            raise
        print(f"wandb: cannot start an online run ({err}); logging offline instead", file=sys.stderr)
        run = wandb.init(mode="offline", **init_args)
    if run.settings.mode in ("offline", "dryrun"):
        print(f"wandb: {name} logged offline; upload with: wandb sync {run.settings.sync_dir}", flush=True)
    else:
        print(f"wandb: {name} -> {run.url}", flush=True)
    return WandbTracker(run)


@contextlib.contextmanager
def tracked(stage: str, name: str, params: Params, config: dict[str, Any]) -> Iterator[Tracker]:
    """``start_run`` as a context: the run is finished however the block ends (marked failed if it raised)."""
    tracker = start_run(stage, name, params, config)
    try:
        yield tracker
    except BaseException:
        # The stage's own error is what the user must see, not a second one from closing the run.
        with contextlib.suppress(Exception):
            if isinstance(tracker, WandbTracker):
                tracker.finish(exit_code=1)
            else:
                tracker.finish()
        raise
    tracker.finish()


class TrackerCallback:
    """``aim.train.Trainer`` callback: each epoch's loss and validation metrics, at step = epoch."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.tracker.log({key: float(getattr(record, key)) for key in EPOCH_KEYS}, step=record.epoch)


def run_config(train: TrainConfig, **parts: Any) -> dict[str, Any]:
    """A run's config: named parts (the stage's params section, hyper-parameters, ...) and the train config."""
    settings = {k: v for k, v in dataclasses.asdict(train).items() if k != "progress"}  # a terminal, not a setting
    return _plain({**parts, "train": settings})


def interaction_table(interactions: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the ``interactions`` of a gate record (gates/interaction.json): one row each."""
    rows = [[" x ".join(it["fields"]), int(it["order"]), it["function"], float(it["gate"])] for it in interactions]
    return INTERACTION_COLUMNS, rows


def embedding_table(fields: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the embedding size per field: the ``fields`` of gates/embed.json
    (``{name: {"kept": [...], "size": n}}``), or a mapping of field name to kept dimension positions."""
    rows = []
    for name, entry in fields.items():
        kept = list(entry["kept"] if isinstance(entry, Mapping) else entry)
        rows.append([name, len(kept), ",".join(map(str, kept))])  # positions as text: one cell type per column
    return EMBEDDING_COLUMNS, rows


def _plain(value: Any) -> Any:
    """JSON-ready copy of a config (pydantic models, dataclasses, tuples, paths): what W&B can store and compare."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "model_dump"):
            return obj.model_dump(mode="json")
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if hasattr(obj, "item"):  # numpy and torch scalars
            return obj.item()
        return str(obj)

    return json.loads(json.dumps(value, default=default))
