"""compare: run a small grid of configs as DVC experiments and print their test AUCs side by side.

    python -m tasks.compare -S 'search.grda.c=0.02,0.05' -S 'retrain.dropout=0.1,0.2'
    python -m tasks.compare -S 'train.lr=0.01,0.1' --target baselines@lr --jobs 2

Each -S goes to `dvc exp run --queue -S ...` as is: DVC expands comma-separated values (Hydra sweep syntax)
into the cartesian product, one queued experiment per config, named <prefix>-1, <prefix>-2, ... The
experiments start from the workspace (uncommitted params.yaml changes included), run in temp copies under
.dvc/tmp/exps via `dvc exp run --run-all`, and are then read back from `dvc exp show --json`. The table goes
to stdout and to reports/compare/<prefix>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.config import ConfigError, parse_params, read_yaml
from tasks.tracking import wandb_runs_dir

PARAMS = Path("params.yaml")
OUT = Path("reports/compare")
MAIN_AUC = "retrain"  # the AIM retrain's test AUC (metrics/retrain.json) sorts the table when the grid has it


class CompareError(RuntimeError):
    """Something the user must fix before (or instead of) running the grid; the message says what."""


def dvc(*args: str, capture: bool = False, env: dict[str, str] | None = None) -> str:
    """Run `dvc ...` (the venv's dvc, next to this Python); stream its output unless captured."""
    exe = Path(sys.executable).with_name("dvc")
    env = dict(os.environ if env is None else env, DVC_NO_ANALYTICS="1")
    done = subprocess.run([str(exe) if exe.exists() else "dvc", *args], env=env, text=True, capture_output=capture)
    if done.returncode:
        detail = (done.stderr or done.stdout or "").strip() if capture else "(see the output above)"
        raise CompareError(f"`dvc {' '.join(args)}` failed ({done.returncode}): {detail}")
    return done.stdout if capture else ""


# --- 1. check the grid before anything is queued ----------------------------------------------------------


def _split_file(override: str) -> str:
    """'params.yaml:a.b=1' -> 'a.b=1'; another params file is refused (every stage reads params.yaml)."""
    head, eq, _ = override.partition("=")
    if eq and ":" in head:
        file, _, rest = override.partition(":")
        if Path(file) != PARAMS:
            raise CompareError(f"-S {override}: only {PARAMS} is supported")
        return rest
    return override


def check_grid(overrides: list[str]) -> list[list[str]]:
    """Every config of the grid, each a list of 'key=value', after checking that each key exists in
    params.yaml and that each config validates like the stages will validate it (tasks.config)."""
    # DVC's own Hydra helpers: the same parser and sweep expansion `dvc exp run --queue -S` uses.
    from dvc.exceptions import DvcException
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps, to_hydra_overrides
    from hydra.errors import HydraException

    overrides = [_split_file(o) for o in overrides]
    raw = read_yaml(PARAMS.read_text()) or {}
    try:
        for o in to_hydra_overrides(overrides):
            if not (o.is_add() or o.is_force_add()):  # '+key=' adds a key on purpose; others must exist
                _check_key(raw, o.key_or_group, o.input_line)
        grid = [point[str(PARAMS)] for point in get_hydra_sweeps({str(PARAMS): overrides})]
        for point in grid:
            with tempfile.TemporaryDirectory() as tmp:  # apply to a copy, as DVC will in the experiment
                trial = Path(tmp) / PARAMS.name
                shutil.copy(PARAMS, trial)
                apply_overrides(trial, point)
                parse_params(read_yaml(trial.read_text()), PARAMS)
    except (HydraException, DvcException) as err:
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        raise CompareError(f"-S {' '.join(overrides)}: {err}{cause}") from None
    except ConfigError as err:
        raise CompareError(f"config {' '.join(point)}:\n{err}") from None
    return grid


def _check_key(raw: dict[str, Any], key: str, line: str) -> None:
    node: Any = raw
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:depth]) or "the top level"
            known = ", ".join(map(str, node)) if isinstance(node, dict) else "nothing (not a mapping)"
            raise CompareError(f"-S {line}: unknown param '{key}': not in {PARAMS} ({where} has: {known})")
        node = node[part]


def check_targets(targets: list[str]) -> None:
    """Each --target a stage of dvc.yaml (``foreach`` ones as ``baselines@lr``), checked before anything is queued."""
    if not targets:
        return
    from dvc.repo import Repo

    with Repo(".") as repo:
        names = [stage.addressing for stage in repo.index.stages]
    known = {*names, *(n.split("@")[0] for n in names)}  # `baselines` is every baselines@<model>
    unknown = [t for t in targets if t.rpartition(":")[2] not in known]  # `dvc.yaml:retrain` is `retrain`
    if unknown:
        raise CompareError(f"--target {', '.join(unknown)}: not a stage of dvc.yaml, which has {', '.join(names)}")


def queued_or_running() -> list[str]:
    """Names of experiments already waiting in the DVC queue (`--run-all` would run them too)."""
    lines = dvc("queue", "status", capture=True).splitlines()
    return [line.split()[1] for line in lines[1:] if line.split()[-1:] in (["Queued"], ["Running"])]


# --- 2. read the experiments back ----------------------------------------------------------------------------


def metric_files(targets: list[str]) -> set[str]:
    """The metrics files the targets' stages (and their upstream) write. An experiment run for one target
    still carries every other metrics file of its baseline, stale: only these belong to the experiment."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        stages = [s for t in targets for s in repo.stage.collect(t, with_deps=True)] if targets else repo.index.stages
        return {Path(o.def_path).as_posix() for s in stages for o in s.outs if o.metric}


def auc_columns(metrics: dict[str, Any], files: set[str]) -> dict[str, float]:
    """Every top-level '*test_auc' of the experiment's own metrics files, named after the file. Not from
    evaluate.json's table: `dvc exp show` drops lists from metrics, and its rows come from these files."""
    out: dict[str, float] = {}
    for path, values in sorted((p, (m or {}).get("data")) for p, m in metrics.items() if p in files):
        label = path.removeprefix("metrics/").removesuffix(".json")  # baselines/lr, retrain, search_embed
        for key, v in (values or {}).items():
            if key.endswith("test_auc") and _number(v):
                out[label if key == "test_auc" else f"{label}:{key.removesuffix('_test_auc')}"] = v
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _get(params: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


def _error(log: str | None, fallback: str) -> str:
    """The failure from an experiment's log (.dvc/tmp/exps/run/...): the failed stage and its own message,
    i.e. a stage's 'error: ...' block or an exception's last traceback line, else DVC's own ERROR line."""
    lines = Path(log).read_text(errors="replace").splitlines() if log and Path(log).exists() else []
    dvc_errors = [x.removeprefix("ERROR: ") for x in lines if x.startswith("ERROR:")]
    stage = re.search(r"failed to reproduce '([^']+)'", dvc_errors[-1]) if dvc_errors else None
    message = None
    for i, line in enumerate(lines):
        if line.startswith("error:"):  # tasks.common.stage_main: 'error: ...' then indented details
            details = [x.strip() for x in lines[i + 1:i + 6] if x.startswith(" ")]
            message = " ".join([line.removeprefix("error: "), *details])
        elif re.match(r"[\w.]+(Error|Exception|Interrupt)\b", line):  # a traceback's last line
            message = line
    if message:
        return f"{stage[1]}: {message}" if stage else message
    return dvc_errors[-1] if dvc_errors else fallback


def collect(prefix: str, keys: list[str], targets: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """(done, failed, pending) experiments named <prefix> or <prefix>-<n>, from `dvc exp show --json`."""
    out = dvc("exp", "show", "--json", capture=True)
    try:
        shown = json.loads(out)
    except json.JSONDecodeError:
        raise CompareError(f"`dvc exp show --json` did not print JSON:\n{out[:500]}") from None
    files, named = metric_files(targets), re.compile(rf"{re.escape(prefix)}(-\d+)?")
    done, failed, pending = [], [], []
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            rev = (group.get("revs") or [{}])[0]
            name = group.get("name") or rev.get("name") or ""
            if not named.fullmatch(name):
                continue
            data, executor = rev.get("data") or {}, group.get("executor") or {}
            params = ((data.get("params") or {}).get(str(PARAMS)) or {}).get("data") or {}
            row = {"name": name, "rev": rev.get("rev"), "params": {k: _get(params, k) for k in keys}}
            state = executor.get("state") or ("failed" if rev.get("error") else "success")
            if state == "failed" or rev.get("error"):
                fallback = (rev.get("error") or {}).get("msg") or "experiment failed"
                failed.append(row | {"error": _error((executor.get("local") or {}).get("log"), fallback)})
            elif state in ("queued", "running"):
                pending.append(row | {"state": state})
            else:
                done.append(row | {"auc": auc_columns(data.get("metrics") or {}, files)})
    def index(row: dict) -> int:  # <prefix>-<n> in queue order; a one-config grid is named <prefix> alone
        return int(row["name"].rpartition("-")[2]) if row["name"] != prefix else 0

    return sorted(done, key=index), sorted(failed, key=index), sorted(pending, key=index)


# --- 3. the table -------------------------------------------------------------------------------------------


def table(done: list[dict], keys: list[str]) -> tuple[list[str], list[list[str]], str | None]:
    """(header, rows, main AUC column): best main AUC first, AUCs to 4 decimals, '–' where a model is absent."""
    aucs = list(dict.fromkeys(c for r in done for c in r["auc"]))
    main = MAIN_AUC if MAIN_AUC in aucs else next(iter(aucs), None)
    if main:
        aucs.remove(main)
        aucs.insert(0, main)
        done = sorted(done, key=lambda r: -r["auc"].get(main, -math.inf))
    rows = [[r["name"], *(fmt_value(r["params"][k]) for k in keys),
             *(f"{r['auc'][c]:.4f}" if c in r["auc"] else "–" for c in aucs)] for r in done]
    return ["experiment", *keys, *aucs], rows, main


def fmt_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)) for line in [header, *rows])


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(x.replace("|", "\\|") for x in line) + " |" for line in lines)


def same_results_warning(done: list[dict]) -> str | None:
    """A grid of several configs whose every AUC is the same, to the last digit: the keys did not reach the
    trained stages (``train.lr`` is shadowed where a model's own ``baselines.models.<m>.train`` sets ``lr``),
    or the stages were restored from DVC's run cache."""
    if len(done) < 2 or not done[0]["auc"] or any(r["auc"] != done[0]["auc"] for r in done[1:]):
        return None
    return (f"all {len(done)} configs gave the same AUCs: the grid's keys did not change what the targets trained. "
            "A model's own setting wins over the shared one (baselines.models.<model>.train.lr over train.lr): "
            "set that key instead")


def report(prefix: str, keys: list[str], targets: list[str]) -> int:
    """Print and write the table of the experiments named <prefix>-*; 1 if none of them succeeded."""
    done, failed, pending = collect(prefix, keys, targets)
    if not (done or failed or pending):
        raise CompareError(f"no experiment named {prefix} or {prefix}-<n> in `dvc exp show`")
    header, rows, main = table(done, keys)
    runs = wandb_runs_dir()
    sync = f"wandb sync {shlex.quote(str(runs))}/offline-run-*"
    title = f"Test AUC of {prefix}-* ({', '.join(targets) or 'dvc.yaml'})" + (f", best {main} first" if main else "")
    lines = [f"## {title}", "", markdown(header, rows) if rows else "(no successful experiment)"]
    print(f"\n{title}\n{render(header, rows) if rows else '(no successful experiment)'}")
    same = same_results_warning(done)
    if same:
        print(f"\nwarning: {same}")
        lines += ["", f"**Warning:** {same}"]
    for kind, items in (("failed", failed), ("not finished", pending)):
        if items:
            print(f"\n{len(items)} {kind}:")
            lines += ["", f"### {len(items)} {kind}", ""]
            for r in items:
                values = " ".join(f"{k}={fmt_value(r['params'][k])}" for k in keys)
                print(f"  {r['name']}  {values}  {r.get('error') or r.get('state')}")
                lines.append(f"- `{r['name']}` {values}: {r.get('error') or r.get('state')}")
    if os.environ.get("WANDB_MODE") == "disabled":
        print("\nW&B: off (WANDB_MODE=disabled)")
    elif done:
        print(f"\nW&B offline runs: {runs}{'' if runs.exists() else ' (none yet)'}\nsync them with:   {sync}")
        lines += ["", f"W&B offline runs: `{runs}`; sync them with `{sync}`"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{prefix}.md").write_text("\n".join(lines) + "\n")
    payload = {"prefix": prefix, "targets": targets, "params": keys, "main_auc": main, "experiments": done,
               "failed": failed, "pending": pending, "wandb_runs_dir": str(runs), "wandb_sync": sync}
    (OUT / f"{prefix}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"report: {OUT / prefix}.md, .json")
    return 0 if done else 1


# --- the command ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tasks.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stages: see dvc.yaml (`dvc stage list`); e.g. --target baselines@lr, --target retrain. "
               "Without --target the whole pipeline runs and metrics/evaluate.json gives every model's AUC.")
    ap.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=V1,V2",
                    help="a params.yaml key and its values, comma-separated (repeat for a grid)")
    ap.add_argument("--target", action="append", default=[], metavar="STAGE",
                    help="run only this stage and its upstream (repeatable); default: all of dvc.yaml")
    ap.add_argument("-j", "--jobs", type=int, default=1,
                    help="experiments run at once, one DVC queue worker each (default 1: training uses every core)")
    ap.add_argument("--name-prefix", default=f"cmp-{time.strftime('%Y%m%d-%H%M%S')}",
                    help="experiments are named <prefix>-1, -2, ... (default cmp-<timestamp>)")
    ap.add_argument("--no-run", action="store_true", help="queue the grid only; run it later, then --report")
    ap.add_argument("--report", action="store_true",
                    help="queue nothing: print the table of the experiments already named <prefix>-*")
    args = ap.parse_args(argv)
    try:
        if not (PARAMS.exists() and Path("dvc.yaml").exists()):
            raise CompareError("run from the project root (where params.yaml and dvc.yaml are)")
        keys = [_split_file(o).lstrip("+~").partition("=")[0] for o in args.overrides]
        if args.report:
            return report(args.name_prefix, keys, args.target)
        if not args.overrides:
            raise CompareError("give at least one -S key=values")
        grid = check_grid(args.overrides)
        check_targets(args.target)
        waiting = [] if args.no_run else queued_or_running()
        if waiting:  # `--run-all` runs the whole queue: don't start someone else's experiments unasked
            raise CompareError(f"the DVC queue already holds {', '.join(waiting)}: run them (dvc exp run "
                               "--run-all) or remove them (dvc queue remove --queued) first, or use --no-run")
        print(f"queueing {len(grid)} experiments as {args.name_prefix}-*")
        dvc("exp", "run", "--queue", "-n", args.name_prefix, *(x for o in args.overrides for x in ("-S", o)),
            *args.target)
        if args.no_run:
            again = " ".join(["python -m tasks.compare --report --name-prefix", args.name_prefix,
                              *(f"-S {shlex.quote(o)}" for o in args.overrides),
                              *(f"--target {t}" for t in args.target)])
            print(f"queued. Run them with `dvc exp run --run-all -j {args.jobs}`, then `{again}`")
            return 0
        # The experiments run in temp copies of the repo (.dvc/tmp/exps/tmp*), deleted afterwards. DVC_ROOT
        # names this repo there, so tasks.tracking writes runs here; a relative WANDB_DIR would not: make it
        # absolute. The queue workers that --run-all starts inherit this environment.
        env = dict(os.environ, WANDB_DIR=str(wandb_runs_dir().parent))
        start = time.time()
        print(f"running {len(grid)} experiments, {args.jobs} at a time (dvc exp run --run-all)", flush=True)
        dvc("exp", "run", "--run-all", "--jobs", str(args.jobs), env=env)
        print(f"ran in {time.time() - start:.0f} s")
        return report(args.name_prefix, keys, args.target)
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
