"""Serve the scheduled deployments of ``prefect.yaml`` from this process: ``python -m flows.serve``.

prefect.yaml is the one place the schedules are written; this reads it through Prefect's own model of the
file and builds each deployment with ``flow.to_deployment``, so ``flow.serve`` and ``prefect deploy --all``
schedule the same runs. Serving needs a Prefect server (``prefect server start``, then
``prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api``); runs start from this process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.cli.deploy._models import PrefectYamlModel  # the schema `prefect deploy` validates the file with
from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint

PROJECT = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT / "prefect.yaml"


def deployments(path: Path = PREFECT_YAML, names: list[str] | None = None) -> list[RunnerDeployment]:
    """The deployments of ``prefect.yaml`` (or those named), with their schedules and parameters."""
    import yaml

    model = PrefectYamlModel.model_validate(yaml.safe_load(path.read_text()))
    built = []
    for config in model.deployments:
        if names and config.name not in names:
            continue
        # Entry points are relative to the project (prefect.yaml's directory), as `prefect deploy` reads them.
        file, func = config.entrypoint.split(":")
        flow = load_flow_from_entrypoint(f"{path.parent / file}:{func}")
        schedules = [_schedule_config_to_deployment_schedule(s.model_dump(exclude_none=True))
                     for s in config.schedules or []]
        built.append(flow.to_deployment(
            name=config.name, schedules=schedules, parameters=config.parameters, description=config.description,
            tags=list(config.tags or []), concurrency_limit=config.concurrency_limit))
    missing = sorted(set(names or []) - {d.name for d in built})
    if missing:
        raise SystemExit(f"no deployment named {missing} in {path}")
    return built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="deployments to serve (default: all in prefect.yaml)")
    serve(*deployments(names=ap.parse_args().names or None))


if __name__ == "__main__":
    main()
