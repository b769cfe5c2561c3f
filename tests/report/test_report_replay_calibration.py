"""Replays (``--replay``) and the calibration benchmark (``--calibration``) in the report: their
pages, their pictures, and the refusal of malformed input.

The replay fixture is made by hand: the two recorded runs under docs/report-example stand in for
the attack and defended runs, and its replay.json says so; no multi-process run is started except
by the one slow test."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import RECORDED_RUNS, ROOT  # type: ignore[import-not-found]
from PIL import Image

from stagewarden.cli import cli
from stagewarden.report import ReportError, build_report
from stagewarden.report.calibration import read_calibration
from stagewarden.report.replays import read_replay
from stagewarden.spec import load_example

CALIBRATION = ROOT / "benchmarks" / "results" / "detection_calibration.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFENCE = """defense:
  receipts: true
  checks:
    - scheme: spot_check
      rate: 1.0
      verifier: coordinator
  response: [skip_stage]
"""


def _fixture_json() -> dict[str, Any]:
    return {
        "format": "stagewarden.replay",
        "version": 1,
        "spec": "example:demo",
        "guarantee": "integrity",
        "kind": "detection",
        "trace": "fixture trace: malicious worker 1:0 uses tamper_activations on its forward unit",
        "prediction": "fixture prediction: some tampered units go undetected",
        "mapping": ["fixture mapping: the recorded attacked run stands for the attack"],
        "attack": {
            "run": "attack",
            "shows_prediction": True,
            "shows": True,
            "detail": "fixture: 12 tampered unit(s), 7 undetected",
            "detections": 1,
            "tampered": 12,
            "undetected": 7,
            "in_model": 5,
            "framed": 0,
        },
        "defended": {
            "run": "defended",
            "defence": DEFENCE,
            "caught": True,
            "shows": True,
            "detail": "fixture: 9 tampered unit(s), 0 undetected",
            "detections": 8,
            "tampered": 9,
            "undetected": 0,
            "in_model": 0,
            "framed": 0,
        },
    }


def _make_replay(folder: Path, data: dict[str, Any] | None = None) -> Path:
    """A replay folder: the recorded attacked run as ``attack/``, the clean one as ``defended/``."""
    shutil.copytree(RECORDED_RUNS[1], folder / "attack")
    shutil.copytree(RECORDED_RUNS[0], folder / "defended")
    (folder / "replay.json").write_text(json.dumps(data or _fixture_json(), indent=2), encoding="utf-8")
    return folder


def _plain(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


@pytest.fixture(scope="module")
def replay_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo spec's report with the replay fixture and the committed calibration result; its index."""
    base = tmp_path_factory.mktemp("replay-report")
    replay = _make_replay(base / "replay-integrity")
    return build_report(load_example("demo"), [], base / "report", replays=[replay], calibration=CALIBRATION)


def test_replay_page_shows_trace_prediction_runs_and_defence(replay_report: Path) -> None:
    """The replays page has the guarantee, trace, prediction, mapping, the runs' table and the defence as YAML."""
    html = (replay_report.parent / "replays.html").read_text(encoding="utf-8")
    text = _plain(html)
    for fragment in (
        "integrity (detection), replayed",
        "fixture trace: malicious worker 1:0 uses tamper_activations",
        "fixture prediction: some tampered units go undetected",
        "fixture mapping: the recorded attacked run stands for the attack",
        "The same attack under two defences",
        "replay-integrity/attack the spec’s shows the prediction: yes 12 7 5 0 1",
        "replay-integrity/defended proposed stops the attack: yes 9 0 0 0 8",
        "fixture: 12 tampered unit(s), 7 undetected",
    ):
        assert fragment in text, fragment
    assert 'class="highlight-yaml' in html
    assert "spot_check" in text and "skip_stage" in text
    assert 'href="run-1.html"' in html and 'href="run-2.html"' in html


def test_replay_runs_join_the_run_pages(replay_report: Path) -> None:
    """Both replay runs are on the runs page with their labels, and each has its own page with a timeline."""
    runs = _plain((replay_report.parent / "runs.html").read_text(encoding="utf-8"))
    assert "replay integrity: attack, spec’s defence: replay-integrity/attack reverse on stage 1 from step 2" in runs
    assert "replay integrity: attack, proposed defence:" in runs
    first = _plain((replay_report.parent / "run-1.html").read_text(encoding="utf-8"))
    assert "Run 1: replay-integrity/attack" in first and "Detection timeline" in first and "Attestation" in first
    index = _plain(replay_report.read_text(encoding="utf-8"))
    assert "1 replay of a counterexample" in index and "detection_calibration.json" in index


def test_calibration_page_shows_every_scenario(replay_report: Path) -> None:
    """The calibration page has a table per scenario with predicted, observed and the interval, and the tally."""
    html = (replay_report.parent / "calibration.html").read_text(encoding="utf-8")
    text = _plain(html)
    assert "24 of 24 predictions lie in their observed 95% interval" in text
    for label in ("S=4 M=4 p=0.05 k=1", "S=4 M=4 p=0.05 k=4", "S=4 M=4 p=0.1 k=9", "S=8 M=2 p=0.2 k=2"):
        assert f"Scenario {label}" in text, label
    # The first scenario's mean latency: predicted 19, observed 19.279 in [18.417, 20.141].
    assert "mean latency L (steps) 19 19.28 [18.42, 20.14] yes" in text
    assert "Pr[G &gt;= 21] 0.3406 0.3525 [0.3319, 0.3737] yes" in text
    assert "2 real training run(s)" in text and "predicted mean 1.78, observed mean 0.5" in text
    assert 'src="_images/calibration.png"' in html


def test_new_pictures_are_valid_png(replay_report: Path) -> None:
    """The calibration picture and the replay runs' timelines are PNGs that Pillow reads in full."""
    images = replay_report.parent / "_images"
    paths = [images / "calibration.png", *sorted(images.glob("timeline-*.png")), images / "loss.png"]
    assert len(paths) == 4
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
            assert image.width > 100 and image.height > 100


def test_replay_without_defended_run(tmp_path: Path) -> None:
    """A replay made with --no-defence (``defended`` null) reads with one run; the page says none was run."""
    data = _fixture_json()
    data["defended"] = None
    folder = _make_replay(tmp_path / "r", data)
    shutil.rmtree(folder / "defended")
    replay = read_replay(folder / "replay.json")
    assert replay.defended is None and replay.defence is None and len(replay.runs) == 1
    index = build_report(load_example("demo"), [], tmp_path / "report", replays=[folder])
    assert "No proposed defence was run" in _plain((index.parent / "replays.html").read_text(encoding="utf-8"))


def _broken(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    keys = path.split(".")
    target = data
    for key in keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format", "something.else", "'format' must be 'stagewarden.replay'"),
        ("version", 2, "version 2 is not supported"),
        ("version", True, "'version' must be an integer"),
        ("guarantee", KeyError, "'guarantee' is missing"),
        ("mapping", "one note", "'mapping' must be a list"),
        ("attack.tampered", "12", "attack.'tampered' must be an integer"),
        ("attack.undetected", -1, "must not be negative"),
        ("attack.shows_prediction", 1, "attack.'shows_prediction' must be a boolean"),
        ("attack.run", "../elsewhere", "must name a folder next to replay.json"),
        ("attack.run", "missing", "not a directory"),
        ("defended", [], "'defended' must be an object or null"),
        ("defended.defence", KeyError, "defended.'defence' is missing"),
    ],
)
def test_malformed_replay_is_refused(tmp_path: Path, path: str, value: Any, message: str) -> None:
    """Each missing or mistyped field of replay.json is a ReportError naming the file and the field."""
    folder = _make_replay(tmp_path / "r", _broken(_fixture_json(), path, value))
    with pytest.raises(ReportError) as caught:
        read_replay(folder)
    assert str(folder / "replay.json") in caught.value.message
    assert message in caught.value.message


def test_replay_run_without_summary_is_refused(tmp_path: Path) -> None:
    """A replay whose attack run is not a run directory is refused, naming the file and the run."""
    folder = _make_replay(tmp_path / "r")
    (folder / "attack" / "summary.json").unlink()
    with pytest.raises(ReportError, match="the attack run directory cannot be read") as caught:
        read_replay(folder)
    assert "replay.json" in caught.value.message


def test_committed_calibration_reads() -> None:
    """The committed benchmark result reads: four scenarios of six figures, every prediction in its interval."""
    calibration = read_calibration(CALIBRATION)
    assert calibration.confidence == 0.95 and calibration.seed == 0
    assert [len(s.rows) for s in calibration.scenarios] == [6, 6, 6, 6]
    assert all(r.within for s in calibration.scenarios for r in s.rows)
    assert calibration.real is not None and calibration.real["latencies"] == [0, 1]


def _calibration_broken(tmp_path: Path, change: Any) -> Path:
    data = json.loads(CALIBRATION.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(benchmark="prover_scale"), "'benchmark' must be 'detection_calibration'"),
        (lambda d: d.update(scenarios=[]), "'scenarios' must be a non-empty list"),
        (lambda d: d.update(confidence=95), "'confidence' must lie between 0 and 1"),
        (lambda d: d["scenarios"][1]["rows"][0].pop("observed"), "scenarios[1].rows[0].'observed' is missing"),
        (lambda d: d["scenarios"][0]["rows"][2].update(low="44"), "scenarios[0].rows[2].'low' must be a number"),
        (lambda d: d["scenarios"][0]["rows"][0].update(within=False), "'within' is false but"),
        (lambda d: d["scenarios"][0]["scenario"].pop("rate"), "scenarios[0].scenario.'rate' is missing"),
        (lambda d: d["scenarios"][2].update(trials=-3), "'trials' must be a count"),
        (lambda d: d["real"].update(latencies=["x"]), "'real.latencies' must be a list of integers"),
    ],
)
def test_malformed_calibration_is_refused(tmp_path: Path, change: Any, message: str) -> None:
    """Each malformed part of a calibration result is a ReportError naming the file and the part."""
    path = _calibration_broken(tmp_path, change)
    with pytest.raises(ReportError) as caught:
        read_calibration(path)
    assert str(path) in caught.value.message and message in caught.value.message


def test_cli_builds_with_replay_and_calibration(tmp_path: Path) -> None:
    """``stagewarden report --replay OUT --calibration FILE`` builds both pages (exit code 0)."""
    replay = _make_replay(tmp_path / "replay")
    out = tmp_path / "report"
    args = ["report", "--example", "demo", "--replay", str(replay), "--calibration", str(CALIBRATION)]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "replays.html").is_file() and (out / "calibration.html").is_file()


def test_cli_bad_replay_and_calibration_exit_2(tmp_path: Path) -> None:
    """A malformed replay.json, a missing replay folder or a non-JSON calibration file: exit code 2,
    a message naming the file, no traceback and no report."""
    runner = CliRunner()
    out = tmp_path / "report"
    replay = _make_replay(tmp_path / "replay", _broken(_fixture_json(), "version", 7))
    garbage = tmp_path / "calibration.json"
    garbage.write_text("{not json", encoding="utf-8")
    cases = [
        (["--replay", str(replay)], str(replay / "replay.json"), "version 7 is not supported"),
        (["--replay", str(tmp_path / "nowhere")], str(tmp_path / "nowhere"), "no such file"),
        (["--calibration", str(garbage)], str(garbage), "not JSON"),
        (["--calibration", str(tmp_path / "none.json")], str(tmp_path / "none.json"), "no such file"),
    ]
    for extra, named, why in cases:
        result = runner.invoke(cli, ["report", "--example", "demo", *extra, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert named in result.output and why in result.output, result.output
        assert "Traceback" not in result.output
        assert not out.exists()


def test_public_api_names_the_new_readers() -> None:
    """The package re-exports the replay and calibration readers beside the run reader."""
    import stagewarden.report as package

    assert {"read_replay", "ReplayData", "read_calibration", "Calibration"} <= set(package.__all__)
    assert package.read_replay is read_replay and package.read_calibration is read_calibration
