"""What the training stages share: encoded splits -> tensors, params -> TrainConfig, and the callbacks
through which a stage keeps a run's history and checkpoints (the loop itself, aim/train.py, writes nothing).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from aim.data import CTRData, FieldSpec, from_arrow
from aim.models import CTRModel, build_model
from aim.search import Interaction, length_scaled_c
from aim.train import EpochRecord, TrainConfig, Trainer, metrics, predict
from tasks.common import (
    FEATURE_MAP,
    LABEL,
    PREDICTIONS,
    REPORTS,
    SPLITS,
    StageError,
    check_same_dataset,
    progress_enabled,
    read_json,
    split_path,
)
from tasks.config import GRDASection, Params, overlay
from tasks.tracking import Tracker, TrackerCallback

MODELS_DIR = Path("models")
INFERENCE_PASSES = 3


def load_fields(feature_map: dict[str, Any]) -> list[FieldSpec]:
    """The fields of ``feature_map.json`` as the models see them."""
    return [
        FieldSpec(
            name=f["name"],
            vocab_size=int(f["vocab_size"]),
            max_length=int(f.get("max_length") or 1),
            multi_valued=f["kind"] == "multi_valued",
        )
        for f in feature_map["fields"]
    ]


def load_encoded(dataset: str | None = None) -> tuple[list[FieldSpec], dict[str, CTRData]]:
    """The fields and the train/valid/test tensors, built once from ``data/encoded``; given ``dataset``
    (params.yaml's), encoded from that dataset."""
    feature_map = read_json(FEATURE_MAP)
    if dataset is not None:
        check_same_dataset(FEATURE_MAP, feature_map.get("dataset"), dataset)
    fields = load_fields(feature_map)
    splits = {}
    for split in SPLITS:
        path = split_path(split)
        if not path.exists():
            raise StageError(f"{path} not found: run the encode stage first (dvc repro encode)")
        splits[split] = from_arrow(pq.read_table(path), fields, LABEL)
    return fields, splits


def train_config(params: Params, overrides: dict[str, Any] | None = None, where: str = "train") -> TrainConfig:
    """``params.train`` (with ``overrides`` on top, checked like the rest) as the loop's TrainConfig."""
    section = overlay(params.train, overrides, where) if overrides else params.train
    return TrainConfig(**section.model_dump(), seed=params.seed, progress=progress_enabled())


def steps_per_epoch(config: TrainConfig, train_rows: int) -> int:
    """Batches in one epoch over ``train_rows`` rows, the last one partial."""
    return math.ceil(train_rows / config.batch_size)


def search_steps(config: TrainConfig, train_rows: int) -> int:
    """A search's length in steps: ``config.epochs`` epochs (a search has no early stop)."""
    return config.epochs * steps_per_epoch(config, train_rows)


def search_grda_c(grda: GRDASection, config: TrainConfig, train_rows: int, name: str) -> float:
    """The GRDA ``c`` of a search that trains ``config.epochs`` epochs over ``train_rows`` rows: ``grda.c``
    scaled to the search's length when ``grda.reference_steps`` is set (aim.search.length_scaled_c)."""
    steps = search_steps(config, train_rows)
    c = length_scaled_c(grda.c, grda.mu, steps, grda.reference_steps)
    if grda.reference_steps is not None:
        print(f"{name}: GRDA c {grda.c:g} x ({grda.reference_steps:,} reference steps / {steps:,} steps)^{grda.mu:g}"
              f" = {c:.4g}")
    return c


@functools.cache  # once per process: a stage that trains many models read and hashed aim/ for each
def library_version() -> str:
    """A hash of the model library's source (``aim/``): a checkpoint trained by other code is not resumed."""
    import aim

    digest = hashlib.sha256()
    root = Path(aim.__file__).parent
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cpp")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short hash of settings and input files: a checkpoint is resumed only by the run that wrote it."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            digest.update(part.read_bytes() if part.stat().st_size < 1 << 20 else str(part.stat()).encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class Checkpoint:
    """Saves the trainer's full state after every epoch; ``restore`` resumes a run the same settings began."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"key": self.key, "trainer": trainer.state_dict()}, tmp)
        tmp.replace(self.path)  # never a half-written checkpoint

    def restore(self, trainer: Trainer) -> bool:
        if not self.path.exists():
            return False
        saved = torch.load(self.path, map_location=trainer.device, weights_only=False)
        if saved.get("key") != self.key:  # another config or other data: start afresh
            return False
        trainer.load_state_dict(saved["trainer"])
        print(f"resuming from {self.path} after epoch {trainer.epoch}")
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class History:
    """Writes the per-epoch curve as CSV for ``dvc plots`` and prints one line per epoch."""

    FIELDS = ("epoch", "train_loss", "valid_auc", "valid_logloss", "lr", "seconds", "samples_per_second")

    def __init__(self, path: Path, label: str) -> None:
        self.path, self.label = path, label

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        print(f"{self.label} epoch {record.epoch:3d}: loss {record.train_loss:.5f}  valid AUC {record.valid_auc:.5f}  "
              f"logloss {record.valid_logloss:.5f}  lr {record.lr:.0e}  {record.samples_per_second:,.0f} samples/s"
              + ("  *" if record.improved else ""), flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.FIELDS)
            for r in trainer.history:
                writer.writerow([round(getattr(r, k), 6) if isinstance(getattr(r, k), float) else getattr(r, k)
                                 for k in self.FIELDS])


def check_trainable(splits: dict[str, CTRData]) -> None:
    """Stop with a stage error naming the file where a split cannot serve: an empty one, or a validation split of
    one class, whose AUC (which early stopping and the best weights follow) is undefined. ``Trainer.fit`` refuses
    these too, with a ValueError for library callers; a stage's user gets this message, not a traceback."""
    sizes = ", ".join(f"{name} {len(splits[name]):,}" for name in SPLITS)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise StageError(f"{split_path(name)} has no rows (rows per split: {sizes}): use a larger log, or larger "
                             "fractions (encode.split.fractions in params.yaml)")
    valid = splits["valid"]
    positives = int(valid.label.sum())
    if positives in (0, len(valid)):
        raise StageError(f"{split_path('valid')} holds one class only (all {len(valid):,} rows labelled "
                         f"{int(positives > 0)}): its AUC is undefined, so early stopping cannot work; use a larger "
                         "validation fraction (encode.split.fractions in params.yaml) or a split with both labels")


def train_and_test(net: CTRModel, config: TrainConfig, splits: dict[str, CTRData], name: str,
                   settings: Any, tracker: Tracker | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Train ``net`` (resuming a checkpoint of the same ``settings`` and data), then score the test split.

    The per-epoch curve goes to ``reports/<name>.csv``, the checkpoint to ``models/checkpoints/<name>.ckpt``
    (removed once done), and, given a ``tracker``, each epoch and the summary to it as well. Returns the
    summary every training stage reports, and the test probabilities.
    """
    check_trainable(splits)
    track = [TrackerCallback(tracker)] if tracker is not None else []
    trainer = Trainer(net, config, callbacks=[History(REPORTS / f"{name}.csv", name), *track])
    # The data by content (row counts, code and label sums), so a checkpoint never resumes on other data, and the
    # library's code, so it never resumes weights that other code trained.
    data = [(len(d), int(d.single.sum()), float(d.label.sum()), [int(m.sum()) for m in d.multi])
            for d in splits.values()]
    key = fingerprint(name, settings, dataclasses.asdict(config) | {"progress": None}, data, library_version())
    checkpoint = Checkpoint(MODELS_DIR / "checkpoints" / f"{name}.ckpt", key)
    if checkpoint.restore(trainer):
        for callback in track:  # a resumed run is a new W&B run: it gets the epochs before the stop too
            for record in trainer.history:
                callback.on_epoch_end(trainer, record)
    trainer.callbacks.append(checkpoint)
    # The steps per epoch, because early stopping and the plateau decay act once an epoch: at 12 steps (48,000 rows
    # at batch 4,096) the decay at an early dip of the validation AUC ended DeepFM's training in docs/own_log.md
    # before its pair term grew; with train.min_epochs 10 it learned the log's interaction.
    steps = steps_per_epoch(config, len(splits["train"]))
    print(f"{name}: {net.num_parameters():,} parameters, {len(splits['train']):,} train rows, batch "
          f"{config.batch_size:,} ({steps:,} step{'s' if steps > 1 else ''} per epoch), device {trainer.device}, "
          f"{config.precision}", flush=True)
    result = trainer.fit(splits["train"], splits["valid"])

    test = splits["test"]
    # Inference time: the best of three passes over the test split, after a warm-up on a full batch. One pass
    # after a 1,024-row warm-up gave 0.746 and 0.804 s per 100k rows for the same ml-100k retrained model in
    # two runs, and the evaluate table compares such figures across models.
    predict(net, test.slice(0, config.eval_batch_size), config.eval_batch_size, precision=config.precision)
    inference = math.inf
    for _ in range(INFERENCE_PASSES):
        start = time.perf_counter()
        probabilities = predict(net, test, config.eval_batch_size, precision=config.precision)
        inference = min(inference, time.perf_counter() - start)
    scores = metrics(test.label.cpu().numpy(), probabilities)
    checkpoint.remove()  # finished: the next run starts afresh
    print(f"{name}: test AUC {scores['auc']:.5f}, logloss {scores['logloss']:.5f} "
          f"(best epoch {result.best_epoch} of {result.epochs_run}, {result.train_seconds:.1f} s training)", flush=True)
    summary = {
        "test_auc": scores["auc"],
        "test_logloss": scores["logloss"],
        "valid_auc": result.best_valid_auc if config.restore_best else result.history[-1].valid_auc,
        "parameters": net.num_parameters(),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 3),
        "train_samples_per_second": round(result.train_samples_per_second, 1),
        "inference_seconds_per_100k": round(inference / len(test) * 100_000, 4),
        "device": str(trainer.device),
        "precision": config.precision,
    }
    if tracker is not None:
        tracker.summary(summary)
    return summary, probabilities


def save_predictions(name: str, probabilities: np.ndarray) -> None:
    """A model's test-split probabilities, ``reports/predictions/<name>.npy``, for evaluate's ROC curves."""
    PREDICTIONS.mkdir(parents=True, exist_ok=True)
    np.save(PREDICTIONS / f"{name}.npy", probabilities)


def _record(it: Interaction, names: list[str]) -> dict[str, Any]:
    return {"fields": [names[f] for f in it.fields], "order": it.order, "function": it.function,
            "gate": round(it.gate, 6)}


def to_records(interactions: list[Interaction], names: list[str]) -> list[dict[str, Any]]:
    """Interactions as JSON records naming their fields, strongest gate first."""
    ordered = sorted(interactions, key=lambda it: (it.order, -abs(it.gate), it.fields, it.function))
    return [_record(it, names) for it in ordered]


def from_records(records: list[dict[str, Any]], names: list[str], where: Path) -> list[Interaction]:
    """The inverse of ``to_records``; a field the data does not have is an error naming the file."""
    position = {name: i for i, name in enumerate(names)}
    out = []
    for k, r in enumerate(records):
        missing = [f for f in r["fields"] if f not in position]
        if missing:
            raise ValueError(f"{where}: interactions[{k}] names field {missing[0]!r}, which the encoded data "
                             f"does not have: re-run the search for this dataset (dvc repro)")
        out.append(Interaction(tuple(sorted(position[f] for f in r["fields"])), r["function"], float(r["gate"])))
    return out


def save_model(path: Path, net: CTRModel, fields: list[FieldSpec]) -> None:
    """``net``'s weights and what builds it again (``load_model``): its registry name, its fields and the
    hyper-parameters ``build_model`` was given (interactions as records naming their fields, in the model's order:
    its weights follow that order). Plain types and tensors only, so the file loads with ``weights_only=True``."""
    names = [f.name for f in fields]
    hparams = {k: [_record(it, names) for it in v] if k == "interactions" else v for k, v in net.hparams.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.name, "fields": [dataclasses.asdict(f) for f in fields], "hyperparameters": hparams,
                "state_dict": net.state_dict()}, path)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[CTRModel, list[FieldSpec]]:
    """A model a training stage saved (``models/aim.pt``, ``models/baselines/<model>.pt``, ...), rebuilt with its
    trained weights, in eval mode, and the fields it reads: ``predict(model, from_arrow(table, fields))`` scores
    a split encoded with the same ``feature_map.json``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a directory, not a model file: name one, such as models/aim.pt or "
                         "models/baselines/<model>.pt")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:  # a file of another kind, or cut short
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a model file that a training stage saved (torch.load: {first[:200]})") from None
    if not isinstance(saved, dict) or not {"model", "fields", "hyperparameters", "state_dict"} <= saved.keys():
        raise ValueError(f"{path}: not a model file of this version's training stages (it needs the keys model, "
                         f"fields, hyperparameters and state_dict): re-run the stage that writes it (dvc repro)")
    fields = [FieldSpec(**f) for f in saved["fields"]]
    hparams = dict(saved["hyperparameters"])
    if "interactions" in hparams:
        hparams["interactions"] = from_records(hparams["interactions"], [f.name for f in fields], path)
    model = build_model(saved["model"], fields, **hparams)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), fields
