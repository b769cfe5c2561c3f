"""The paper-reproduction page (``report --paper FILE``): the benchmark's table and figure, and
the refusal of a file that is not the benchmark's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stagewarden.cli import cli
from stagewarden.report import ReportError
from stagewarden.report.paper import read_paper

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def _row(setting: str, final: float, vs: float | None) -> dict[str, Any]:
    return {
        "setting": setting,
        "seeds": 3,
        "completed": 3,
        "final_loss": final,
        "final_loss_sd": 0.01,
        "vs_clean_percent": vs,
        "steps_reached": 200.0,
        "detections": 0.0 if vs is None else 150.0,
        "recomputed_steps": 0.0 if vs is None else 96.0,
        "computations": 200.0 if vs is None else 296.0,
        "wall_seconds": 40.0,
    }


def _result(folder: Path, **changes: Any) -> Path:
    data = {
        "format": "stagewarden.paper_reproduction",
        "version": 1,
        "command": "paper_reproduction.py --steps 200 --seeds 3",
        "steps": 200,
        "seeds": 3,
        "rows": [_row("clean", 2.53, None), _row("reverse-forward-0.5-skip_stage", 2.55, 0.8)],
    }
    data.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "paper_reproduction.json").write_text(json.dumps(data))
    return folder / "paper_reproduction.json"


def test_paper_page_shows_the_table_and_the_figure(tmp_path: Path) -> None:
    """The report built with --paper has a page with each configuration's row and the figure beside the file."""
    result = _result(tmp_path / "bench")
    (tmp_path / "bench" / "paper_reproduction.png").write_bytes(PNG)
    out = tmp_path / "report"
    ran = CliRunner().invoke(cli, ["report", "--example", "demo", "--paper", str(result), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (out / "paper.html").read_text(encoding="utf-8")))
    assert "Paper reproduction" in text and "200 steps per run, 3 seed(s)" in text
    assert "reverse-forward-0.5-skip_stage 3 / 3 200 2.550 (0.010) +0.8% 150.0 96.0 296.0 40" in text
    assert (out / "_images" / "paper_reproduction.png").is_file()


def test_a_file_without_step_computations_shows_a_dash(tmp_path: Path) -> None:
    """A result file written before step computations were recorded still renders, with ``-`` for them."""
    rows = [{k: v for k, v in _row(name, 2.5, vs).items() if k != "computations"} for name, vs in (("clean", None),)]
    result = _result(tmp_path / "bench", rows=rows)
    out = tmp_path / "report"
    ran = CliRunner().invoke(cli, ["report", "--example", "demo", "--paper", str(result), "--out", str(out)])
    assert ran.exit_code == 0, ran.output
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", (out / "paper.html").read_text(encoding="utf-8")))
    assert "clean 3 / 3 200 2.500 (0.010) - 0.0 0.0 - 40" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "stagewarden.replay"}, "not a result file"),
        ({"rows": []}, "no rows"),
        ({"rows": [{"setting": "clean"}]}, "a row is malformed"),
        ({"steps": "200"}, "must be integers"),
    ],
)
def test_malformed_paper_results_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    """Each malformed result file is a ReportError naming the file and the problem."""
    with pytest.raises(ReportError, match=message):
        read_paper(_result(tmp_path, **change))
    with pytest.raises(ReportError, match="cannot read it"):
        read_paper(tmp_path / "missing.json")
