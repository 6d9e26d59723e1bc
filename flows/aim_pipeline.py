"""aim_pipeline: the DVC pipeline as a Prefect flow, one task per DVC stage.

    python -m flows.aim_pipeline                                   # the whole pipeline, like `dvc repro`
    python -m flows.aim_pipeline --no-search                       # nightly: the searched gates stay frozen
    python -m flows.aim_pipeline --dataset frappe -S search.grda.c=0.1 --experiment frappe-c01

Each task runs its stage through DVC (``dvc repro --single-item <stage>``), so a scheduled run is
recorded in ``dvc.lock`` exactly like a hand-run ``dvc repro``, and a stage whose inputs did not change
is skipped by DVC, not re-run. The flow has no pipeline logic of its own: the stages are read from
``dvc.yaml`` and run in its DAG order; the stage logic is in ``tasks/<stage>.py``.

A run of another config (``dataset``, ``overrides``) is a DVC experiment: the overrides are applied to
params.yaml by DVC's own ``-S`` code (as ``dvc exp run -S`` does), the stages run, and ``dvc exp save``
records the result under the experiment's name. Like a workspace ``dvc exp run``, the workspace then
holds that experiment (``dvc exp show`` lists it; ``git checkout params.yaml`` goes back).

With no Prefect server configured the flow runs against a temporary local one (ephemeral mode);
``flows/serve.py`` serves the scheduled deployments of ``prefect.yaml``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State

PROJECT = Path(__file__).resolve().parents[1]

# Prefect's server sends usage telemetry unless told not to. On a busy 2-core machine its heartbeat met "database is
# locked" in the temporary server's SQLite and logged a 60-line traceback before the first stage ran. Off unless the
# user sets it: the temporary server is a subprocess and reads it from this environment.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Stages that search the architecture. A run with search=False leaves them as they are (their gate files
# are what retrain and the transfers read), so a nightly run retrains on fresh data with the gates frozen.
SEARCH_STAGES = ("search_interaction", "search_embed", "autofis")

# DVC output that means another process held the repo for a moment: worth a retry, unlike a stage's own
# failure (a failed validation fails the same way every time).
TRANSIENT = ("Unable to acquire lock", "is busy", "Resource temporarily unavailable", "Connection reset")


class StageFailed(RuntimeError):
    """A DVC stage failed; the message names the stage and carries the stage's own error."""

    def __init__(self, stage: str, returncode: int, detail: str, transient: bool = False) -> None:
        super().__init__(f"stage {stage!r} failed (exit {returncode}): {detail}")
        self.stage, self.returncode, self.transient = stage, returncode, transient


def pipeline_stages(root: Path) -> list[dict[str, Any]]:
    """The stages of ``root/dvc.yaml`` in the order ``dvc repro`` runs them, each with its name, the metric
    files it declares and all its outputs. Planned by DVC's own code (``foreach`` stages come
    expanded)."""
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    with Repo(str(root)) as repo:
        # DVC resolves targets against the working directory, not the repo: name the file absolutely.
        targets = [str(Path(repo.root_dir) / PROJECT_FILE)]
        order = plan_repro(get_active_graph(repo.index.graph), collect_stages(repo, targets))
        return [{"name": s.addressing.split(":")[-1], "metrics": [str(o.def_path) for o in s.outs if o.metric],
                 "outs": [str(o.def_path) for o in s.outs]} for s in order]


def _dvc(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True)


def _error_detail(output: str) -> str:
    """The stage's own error (``error: ...`` from tasks/common.stage_main, with the lines that follow it,
    e.g. each failed expectation) up to DVC's ERROR line; without one, DVC's ERROR line."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if start is not None:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("ERROR")), len(lines))
        return "\n".join(lines[start:end])
    dvc = [line for line in lines if line.startswith("ERROR")]
    return dvc[-1] if dvc else (lines[-1] if lines else "no output")


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """Nested metrics as (dotted key, value) rows; lists of records are left to ``_record_table``, another
    long list is summarised by its length."""
    if isinstance(value, dict):
        return [row for key, inner in value.items()
                for row in _flatten(f"{prefix}.{key}" if prefix else str(key), inner)]
    if _records(value):
        return []
    if isinstance(value, list) and len(value) > 5:
        return [(prefix, f"[{len(value)} items]")]
    return [(prefix, value)]


def _cell(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else "" if value is None else str(value)


def _record_table(records: list[dict[str, Any]]) -> str:
    """A list of records (e.g. evaluate's one row per model) as one markdown table; a nested value is columns
    of its own (``aim_retrain_minus_this.p_value``), not a Python dict in a cell."""
    records = [dict(_flatten("", record)) for record in records]
    columns = list(dict.fromkeys(key for record in records for key in record))
    return "\n".join([f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
                     + [f"| {' | '.join(_cell(r.get(c)) for c in columns)} |" for r in records[:200]]) + "\n"


def metrics_markdown(stage: str, root: Path, files: list[str]) -> str:
    """The stage's metric files as markdown: scalars as metric/value rows (nested keys joined with dots),
    lists of records as tables of their own, other long lists summarised."""
    parts = [f"# {stage}\n"]
    for name in files:
        path = root / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for key, value in (data.items() if isinstance(data, dict) else []):  # tables first: evaluate's models
            if _records(value):
                parts.append(f"## {name}: {key}\n\n{_record_table(value)}")
        rows = _flatten("", data)
        if rows:
            parts.append(f"## {name}\n\n| metric | value |\n|---|---|\n"
                         + "\n".join(f"| {key} | {_cell(value)} |" for key, value in rows[:200]) + "\n")
    return "\n".join(parts)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may pass on a second try: a busy repo or a killed process, not a stage's own error."""
    try:
        state.result()
    except StageFailed as err:
        return err.transient
    except Exception:  # anything else (OSError, ...) is the machine, not the stage
        return True
    return False


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=_transient)
def run_stage(stage: str, root: str, metrics: list[str]) -> str:
    """Run one DVC stage (skipped by DVC when its inputs are unchanged); attach its metrics as an artifact."""
    logger = get_run_logger()
    done = _dvc(["repro", "--single-item", stage], Path(root))
    output = done.stdout + done.stderr
    for line in output.splitlines():
        if line.strip():
            logger.info(line)
    if done.returncode:
        transient = done.returncode < 0 or any(marker in output for marker in TRANSIENT)
        raise StageFailed(stage, done.returncode, _error_detail(output), transient)
    skipped = f"Running stage '{stage}'" not in output
    if metrics:
        create_markdown_artifact(metrics_markdown(stage, Path(root), metrics),
                                 key=re.sub(r"[^a-z0-9-]+", "-", stage.lower()),
                                 description=f"metrics of stage {stage}" + (" (unchanged)" if skipped else ""))
    return "skipped" if skipped else "ran"


def set_overrides(params: Path, overrides: list[str]) -> None:
    """Set ``key=value`` overrides in ``params`` with DVC's own ``-S`` implementation, then check the result
    with the project's config schema, so that a bad key fails naming it; a rejected override leaves the file as
    it was."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    from tasks.config import load_params

    original = params.read_text()
    try:
        dvc_apply(params, list(overrides))
        load_params(params)  # raises ConfigError naming the key and the file
    except Exception as err:
        params.write_text(original)
        cause = str(err.__cause__ or err)  # DVC wraps hydra's message (which names the key) in its cause
        # Hydra adds "To append to your config use +key=value", which only leads to "unknown key": the likely
        # keys say more.
        unknown = re.match(r"Could not override '([^']+)'", cause)
        if unknown:
            keys = _flat_keys(yaml.safe_load(original))
            near = difflib.get_close_matches(unknown[1], keys, n=3)
            cause = f"unknown key {unknown[1]!r}" + (f" (did you mean {', '.join(near)}?)" if near else "")
        raise ValueError(f"override {overrides} rejected for params.yaml: {cause}") from None


def _flat_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a params tree, as ``-S`` names them."""
    if not isinstance(tree, dict):
        return []
    return [k for key, value in tree.items() for k in [prefix + str(key), *_flat_keys(value, f"{prefix}{key}.")]]


def with_dataset(overrides: list[str] | None, dataset: str | None) -> list[str]:
    """The overrides, with ``--dataset`` as the override it is."""
    return list(overrides or []) + ([f"dataset={dataset}"] if dataset else [])


@task
def apply_overrides(root: str, overrides: list[str]) -> None:
    """``set_overrides`` on the project's params.yaml, before any stage runs."""
    set_overrides(Path(root) / "params.yaml", overrides)


@task
def save_experiment(root: str, name: str, stages: list[str]) -> str:
    """Record the workspace as a DVC experiment (``dvc exp save``), so ``dvc exp show`` compares it.

    Only ``stages`` (those this run gave to DVC) are committed: a bare ``dvc exp save`` commits every stage of
    dvc.lock with the current params, so a stage the run left out (``--stages``, frozen searches) would be
    recorded as run with the overrides, and ``dvc status`` would call it up to date."""
    done = _dvc(["exp", "save", "--force", "--name", name, *stages], Path(root))
    if done.returncode:
        raise RuntimeError(f"dvc exp save failed: {_error_detail(done.stdout + done.stderr)}")
    return name


@flow(name="aim_pipeline", log_prints=True)
def aim_pipeline(dataset: str | None = None, overrides: list[str] | None = None, search: bool = True,
                 stages: list[str] | None = None, experiment: str | None = None,
                 root: str | None = None) -> dict[str, str] | State:
    """Run the pipeline's DVC stages in DAG order, one Prefect task each.

    Args:
        dataset: a preset of params.yaml ``datasets`` (the same as the override ``dataset=<name>``).
        overrides: ``key=value`` params overrides, as ``dvc exp run -S`` takes them.
        search: False keeps the architecture searches (and their gate files) as they are: the nightly
            retrain on fresh logs with the searched gates frozen.
        stages: run only these stages (names as in dvc.yaml, e.g. ``baselines@fm``), still in DAG order.
        experiment: the DVC experiment name under which a run with overrides is saved.
        root: the project directory (where dvc.yaml is); default: this checkout.
    Returns:
        stage -> "ran" or "skipped" (DVC found its inputs unchanged). A failed stage ends the flow in a Failed
        state with the stage's error as its message; a plain call raises that StageFailed.
    """
    project = Path(root or PROJECT).resolve()
    overrides = with_dataset(overrides, dataset)
    if not search:  # the frozen searches' gates and metrics must exist: later stages read them. Checked before
        # the overrides are applied, so that a refusal leaves params.yaml as it was.
        missing = [out for stage in pipeline_stages(project) if stage["name"] in SEARCH_STAGES
                   for out in stage["outs"] if not (project / out).exists()]
        if missing:
            raise ValueError(f"search=False reuses the outputs of an earlier search, but {', '.join(missing)} "
                             f"do not exist in {project}: run the whole pipeline once first (the `research` "
                             "deployment, `python -m flows.aim_pipeline` or `dvc repro`), or `dvc checkout` them")
    if overrides:
        apply_overrides(str(project), overrides)
    plan = pipeline_stages(project)
    names = [s["name"] for s in plan]
    unknown = sorted(set(stages or []) - set(names))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {names}")
    results: dict[str, str] = {}
    for stage in plan:
        name = stage["name"]
        if stages and name not in stages:
            continue
        if not search and name in SEARCH_STAGES:
            print(f"{name}: frozen (search=False), its gates are used as they are")
            continue
        # One task per stage, named as the stage (stage name in dvc.yaml = tasks/<stage>.py = task name).
        try:
            results[name] = run_stage.with_options(name=name, task_run_name=name)(name, str(project),
                                                                                  stage["metrics"])
        except StageFailed as err:
            # A Failed state, not a raised exception: Prefect then logs the stage's error in one line instead of
            # its engine's traceback, and the flow's caller still gets the StageFailed (from state.result()).
            return Failed(message=str(err), data=err)
    if overrides or experiment:
        left_out = [stage["name"] for stage in plan if stage["name"] not in results]
        if left_out:
            print(f"not run in this experiment, so their results are the earlier ones: {', '.join(left_out)} "
                  "(`dvc status` lists those whose params or inputs changed)")
        save_experiment(str(project), experiment or "flow-" + re.sub(r"[^a-zA-Z0-9-]+", "-", "-".join(overrides)),
                        list(results))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the AIM pipeline's DVC stages as a Prefect flow.")
    ap.add_argument("--dataset", help="a dataset preset of params.yaml")
    ap.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a params override, as `dvc exp run -S` takes it (repeatable)")
    ap.add_argument("--no-search", dest="search", action="store_false",
                    help=f"keep the searched gates frozen (skip {', '.join(SEARCH_STAGES)})")
    ap.add_argument("--stages", nargs="+", help="only these stages")
    ap.add_argument("--experiment", help="DVC experiment name for a run with overrides")
    ap.add_argument("--root", help="project directory (default: this checkout)")
    args = ap.parse_args()
    overrides = with_dataset(args.overrides, args.dataset)
    if overrides:  # a bad key or value is named here, in a line, before Prefect starts (its log has tracebacks)
        with tempfile.TemporaryDirectory() as scratch:
            trial = Path(scratch) / "params.yaml"
            shutil.copyfile(Path(args.root or PROJECT) / "params.yaml", trial)
            try:
                set_overrides(trial, overrides)
            except ValueError as err:
                sys.exit(f"aim_pipeline failed: {str(err).replace(str(trial), 'params.yaml')}")
    try:
        results = aim_pipeline(dataset=args.dataset, overrides=args.overrides, search=args.search,
                               stages=args.stages, experiment=args.experiment, root=args.root)
    except (StageFailed, ValueError) as err:
        sys.exit(f"aim_pipeline failed: {err}")
    ran = [s for s, r in results.items() if r == "ran"]
    print(f"aim_pipeline: {len(ran)} stage(s) ran, {len(results) - len(ran)} unchanged")


if __name__ == "__main__":
    main()
