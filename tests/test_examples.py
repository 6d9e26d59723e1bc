"""The walkthrough's log (examples/ad_log.py) reads with its spec (examples/ads.yaml), as docs/own_log.md shows."""

from pathlib import Path

import polars as pl
import yaml

from tasks import encode, ingest
from tasks.common import ROWS
from tasks.config import load_params, read_yaml
from tasks.training import load_encoded
from tests.conftest import ROOT


def test_the_walkthroughs_log_reads_with_its_spec(workdir: Path) -> None:
    from dvc.utils.hydra import apply_overrides

    from examples.ad_log import make_log

    lines, ceiling, main_effects = make_log(3000)
    (workdir / "ads.csv").write_text("\n".join(lines) + "\n")
    spec = read_yaml((ROOT / "examples/ads.yaml").read_text())["ads"] | {"paths": [str(workdir / "ads.csv")]}
    params_file = workdir / "params.yaml"
    params_file.write_text(yaml.safe_dump({"dataset": "synthetic", "datasets": {"ads": spec}}, sort_keys=False))
    apply_overrides(params_file, ["dataset=ads"])  # as `dvc exp run -S dataset=ads` does: "yes" loses its quotes
    params = load_params(params_file)

    metrics = ingest.run(params)
    assert (metrics["rows_in"], metrics["rows_ok"], metrics["rows_rejected"]) == (3002, 3000, 2)
    assert metrics["rejected_by_reason"] == {"wrong column count": 1, "label outside mapping": 1}
    rows = pl.read_parquet(ROWS)
    clicks = sum(line.split(",")[1] == "yes" for line in lines[1:-2])
    assert rows["label"].sum() == clicks and 0 < clicks < 3000
    assert rows["price"].null_count() == len(range(0, 3000, 97))  # empty bids are missing, not rejected

    assert encode.run(params)["num_fields"] == 8
    fields, splits = load_encoded()
    assert [(f.name, f.multi_valued) for f in fields] == [
        ("ts_hour", False), ("ts_weekday", False), ("site", False), ("ad", False), ("device", False),
        ("price", False), ("age", False), ("tags", True)]
    assert sum(len(split) for split in splits.values()) == 3000
    assert 0.5 < main_effects < ceiling - 0.05 and ceiling < 0.75  # the interaction is there to find, and faint
