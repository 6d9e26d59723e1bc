"""make run's closing summary repeats the stages' warnings, which scroll past in a `dvc repro` log."""

import json
from pathlib import Path

from tasks.common import METRICS
from tasks.summary import render


def test_the_summary_repeats_the_warnings(workdir: Path) -> None:
    METRICS.mkdir(parents=True)
    assert "warnings" not in render()  # nothing to say: no section
    (METRICS / "encode.json").write_text(json.dumps({"uninformative_fields": ["country", "empty"]}))
    (METRICS / "search_interaction.json").write_text(json.dumps({"warnings": ["search_interaction: order 2 kept 9"]}))
    (METRICS / "autofis.json").write_text(json.dumps({"warnings": []}))
    lines = render().splitlines()
    at = lines.index("warnings")
    assert lines[at + 1:] == ["  encode: no signal in the fields country, empty (one value in every train row, or none "
                              "seen min_count times)", "  search_interaction: order 2 kept 9"]
