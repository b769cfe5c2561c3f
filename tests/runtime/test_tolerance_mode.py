"""Tolerance-mode spot checks: comparison of output lists, per-stage calibration from seed-derived
units, the configuration and CLI flag, and multi-process runs with an honest worker whose numerics
differ from the verifier's (``STAGEWARDEN_TEST_NUMERICS``), a noise attack, a standby's take-over,
a resume and a worker beyond the cap."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from distributed_helpers import DATA, TINY, tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.cli import cli
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.calibration import (
    CALIBRATION_UNITS,
    MAX_TOLERANCE,
    calibrate_stage,
    calibration_inputs,
    calibration_outputs,
    tolerance_record,
)
from stagewarden.runtime.config import ConfigError, RunConfig
from stagewarden.runtime.data import Batches, load_corpus
from stagewarden.runtime.launch import LaunchError, launch_local
from stagewarden.runtime.model import build_stage
from stagewarden.runtime.spotcheck import TOLERANCE_FLOOR, SpotCheckError, compare_within
from stagewarden.runtime.units import deterministic
from stagewarden.runtime.worker import NUMERICS_ENV

TINY_FLAGS = ["--n-layer", "4", "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--data", DATA]
#: Liveness settings short enough for tests and long enough for a loaded 2-core machine.
FAST = dict(heartbeat_timeout=6.0, silence_timeout=12.0, timeout=60.0)


def _events(run: Path, name: str) -> list[dict[str, Any]]:
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


# -- compare_within ----------------------------------------------------------------------------


def test_compare_within_passes_a_small_relative_error_and_fails_a_large_one() -> None:
    """Outputs off by 1e-6 relative pass a 1e-5 tolerance; off by 1e-2 they fail, with the worst error reported."""
    g = torch.Generator().manual_seed(0)
    expected = [torch.randn(4, 8, generator=g), torch.randn(3, generator=g)]
    close = [t * (1 + 1e-6) for t in expected]
    far = [expected[0], expected[1] * (1 + 1e-2)]
    ok = compare_within(expected, close, 1e-5)
    assert ok.equal and 0 < ok.relative_error < 2e-6 and ok.tolerance == 1e-5
    bad = compare_within(expected, far, 1e-5)
    assert not bad.equal and bad.relative_error == pytest.approx(1e-2, rel=1e-3)


def test_compare_within_fails_on_a_dtype_shape_or_length_mismatch() -> None:
    """A dtype, shape or list-length mismatch fails whatever the values, with an infinite error."""
    a = torch.ones(2, 3)
    for observed in ([a.double()], [torch.ones(3, 2)], [a, a], []):
        result = compare_within([a], observed, 1.0)
        assert not result.equal and math.isinf(result.relative_error)
    assert compare_within([], [], 0.0).equal


def test_compare_within_refuses_a_negative_or_nan_tolerance() -> None:
    """A negative or NaN tolerance is a SpotCheckError, not a silent pass."""
    for bad in (-1.0, math.nan):
        with pytest.raises(SpotCheckError, match="tolerance"):
            compare_within([torch.ones(1)], [torch.ones(1)], bad)


# -- calibration -------------------------------------------------------------------------------


def test_calibration_inputs_are_deterministic_from_the_seed_and_not_training_data() -> None:
    """Calibration inputs depend only on seed, stage and unit, have the stage's shapes and are not the step's data."""
    config = tiny_config(stages=3)
    first = calibration_inputs(config, 0, 0)
    assert all(torch.equal(first[k], v) for k, v in calibration_inputs(config, 0, 0).items())
    assert not torch.equal(first["input"], calibration_inputs(config, 0, 1)["input"])
    assert not torch.equal(first["input"], calibration_inputs(tiny_config(stages=3, seed=1), 0, 0)["input"])
    assert set(first) == {"input", "grad_output"} and first["input"].dtype == torch.int64
    assert first["input"].shape == (4, 16) and first["grad_output"].shape == (4, 16, 32)
    middle, last = calibration_inputs(config, 1, 0), calibration_inputs(config, 2, 0)
    assert set(middle) == {"input", "grad_output"} and middle["input"].shape == (4, 16, 32)
    assert set(last) == {"input", "targets"} and last["targets"].dtype == torch.int64
    batches = Batches(load_corpus([Path(DATA)]), TINY.block_size, 4, config.microbatches, config.seed)
    assert not torch.equal(first["input"], batches.microbatch(0, 0)[0])


def _outputs(config: RunConfig, stage: int, skew: float = 0.0) -> list[dict[str, torch.Tensor]]:
    module = build_stage(config.model, config.stages, stage, config.seed)
    with deterministic(config.train.threads):
        units = [
            calibration_outputs(module, calibration_inputs(config, stage, i), config.microbatches)
            for i in range(CALIBRATION_UNITS)
        ]
    assert all(p.grad is None for p in module.parameters())  # the stage's own gradients are left alone
    return [{k: v * (1 + skew) for k, v in unit.items()} for unit in units]


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_an_identical_worker_calibrates_to_the_floor(stage: int) -> None:
    """Calibration outputs computed as the verifier computes them agree bitwise: the tolerance is the 64-ulp floor."""
    config = tiny_config(stages=3)
    weights = build_stage(config.model, config.stages, stage, config.seed).state_dict()
    with deterministic(config.train.threads):
        tolerance = calibrate_stage(config, stage, weights, _outputs(config, stage))
    assert tolerance.max_observed == 0.0 and tolerance.value == TOLERANCE_FLOOR
    assert tolerance.samples > CALIBRATION_UNITS  # every output tensor of every unit is a sample


def test_calibration_measures_a_skewed_worker_and_applies_the_safety_factor() -> None:
    """Outputs off by a relative 1e-4 give a tolerance of about 1e-3 (x10); off by 1e-3 it exceeds the cap."""
    config = tiny_config()
    weights = build_stage(config.model, config.stages, 1, config.seed).state_dict()
    with deterministic(config.train.threads):
        near = calibrate_stage(config, 1, weights, _outputs(config, 1, skew=1e-4))
        far = calibrate_stage(config, 1, weights, _outputs(config, 1, skew=1e-3))
    assert near.max_observed == pytest.approx(1e-4, rel=0.05) and near.value == pytest.approx(10 * near.max_observed)
    assert far.value > MAX_TOLERANCE


def test_malformed_calibration_outputs_are_refused() -> None:
    """Too few units, a missing output or a wrong shape is a SpotCheckError naming the problem."""
    config = tiny_config()
    weights = build_stage(config.model, config.stages, 1, config.seed).state_dict()
    good = _outputs(config, 1)
    missing = [dict(good[0]), good[1]]
    del missing[0]["grad_input"]
    reshaped = [{**good[0], "output": good[0]["output"][:1]}, good[1]]
    for observed, needle in ((good[:1], "2 units"), (missing, "outputs"), (reshaped, "'output'")):
        with pytest.raises(SpotCheckError, match=needle):
            calibrate_stage(config, 1, weights, observed)


def test_a_non_finite_calibration_output_gives_an_infinite_tolerance() -> None:
    """A NaN where the re-execution is finite calibrates to an infinite tolerance, recorded as a string."""
    config = tiny_config()
    weights = build_stage(config.model, config.stages, 1, config.seed).state_dict()
    observed = _outputs(config, 1)
    observed[0]["output"] = observed[0]["output"].clone()
    observed[0]["output"][0, 0, 0] = math.nan
    tolerance = calibrate_stage(config, 1, weights, observed)
    assert math.isinf(tolerance.value) and tolerance.value > MAX_TOLERANCE
    record = tolerance_record(tolerance)
    assert record["tolerance"] == "inf" and record["cap"] == MAX_TOLERANCE
    json.dumps(record, allow_nan=False)


# -- configuration and CLI ---------------------------------------------------------------------


def test_the_configuration_takes_tolerance_only_with_spot_checks() -> None:
    """spot_check_compare is bitwise by default, tolerance needs verification spot_check, unknown values are refused."""
    assert RunConfig().spot_check_compare == "bitwise"
    config = RunConfig(verification="spot_check", spot_check_compare="tolerance")
    assert RunConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="needs verification spot_check, not 'none'"):
        RunConfig(spot_check_compare="tolerance")
    with pytest.raises(ConfigError, match="spot_check_compare must be one of bitwise, tolerance"):
        RunConfig(verification="spot_check", spot_check_compare="approximate")


def test_the_compare_mode_is_measured() -> None:
    """A worker started in another compare mode has another measured configuration (and is refused at admission)."""
    bitwise = RunConfig(verification="spot_check")
    tolerance = RunConfig(verification="spot_check", spot_check_compare="tolerance")
    assert bitwise.measured_json()["spot_check_compare"] == "bitwise"
    assert bitwise.measured_json() != tolerance.measured_json()


def test_the_cli_flag_is_bad_input_without_spot_checks(tmp_path: Path) -> None:
    """--spot-check-compare tolerance without spot checks, or an unknown mode, is bad input (exit 2)."""
    base = ["train", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, [*base, "--spot-check-compare", "tolerance"])
    assert result.exit_code == 2 and "needs verification spot_check" in result.output
    result = CliRunner().invoke(cli, [*base, "--spot-check-compare", "loose", "--verification", "spot_check"])
    assert result.exit_code == 2 and "loose" in result.output
    assert not (tmp_path / "run").exists()


# -- multi-process runs ------------------------------------------------------------------------


@pytest.mark.slow
def test_an_honest_worker_on_other_numerics_is_convicted_bitwise_but_passes_tolerance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 0 off by 1e-6 is convicted bitwise; in tolerance mode (CLI) it calibrates to ~1e-5 and audits clean."""
    monkeypatch.setenv(NUMERICS_ENV, "0:1e-6")
    settings: dict[str, Any] = dict(verification="spot_check", spot_check_rate=1.0, response="restart")
    bitwise = launch_local(tiny_config(**settings), tmp_path / "bitwise").summary
    first = bitwise["detections"][0]
    assert (first["worker"], first["step"], first["check"]) == ("s0r0", 0, "spot_check")
    assert {d["worker"] for d in bitwise["detections"]} == {"s0r0"}
    assert bitwise["spot_check_tolerance"] is None and not _events(tmp_path / "bitwise", "calibration")

    out = tmp_path / "tolerance"
    args = ["train", "--stages", "2", "--microbatches", "2", "--steps", "2", "--schedule", "gpipe", *TINY_FLAGS]
    args += ["--verification", "spot_check", "--spot-check-rate", "1", "--spot-check-compare", "tolerance"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "spot_check p=1, tolerance: 20 units re-executed" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["detections"] == []
    assert summary["spot_check"]["units_checked"] == 2 * (2 * 2 * 2 + 2)
    skewed, exact = summary["spot_check_tolerance"]
    assert (skewed["worker"], skewed["stage"], skewed["accepted"]) == ("s0r0", 0, True)
    assert skewed["max_relative_error"] == pytest.approx(1e-6, rel=0.2)
    assert skewed["tolerance"] == pytest.approx(10 * skewed["max_relative_error"])
    assert exact["max_relative_error"] == 0.0 and exact["tolerance"] == TOLERANCE_FLOOR
    calibrations = _events(out, "calibration")
    assert [(e["worker"], e["session"], e["at_step"]) for e in calibrations] == [("s0r0", 0, 0), ("s1r0", 0, 0)]
    assert CliRunner().invoke(cli, ["audit", str(out)]).exit_code == 0
    assert audit_run_dir(out).clean


@pytest.mark.slow
def test_a_noise_attack_is_caught_at_its_first_step_in_tolerance_mode(tmp_path: Path) -> None:
    """Noise of 1% relative magnitude from stage 1 at step 1 is caught there at p=1, beyond the calibrated tolerance."""
    plan = AttackPlan.from_cli("noise", "1", 1.0, 1, noise=1e-2).to_json()
    config = tiny_config(
        stages=3,
        microbatches=1,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        spot_check_compare="tolerance",
        response="restart",
    )
    summary = launch_local(config, tmp_path / "run").summary
    first = summary["detections"][0]
    assert (first["step"], first["worker"], first["unit_kind"], first["check"]) == (1, "s1r0", "forward", "spot_check")
    assert "calibrated tolerance" in first["message"]
    assert {d["worker"] for d in summary["detections"]} == {"s1r0"}
    assert summary["status"] == "stopped"


@pytest.mark.slow
def test_a_standby_taking_over_a_stage_is_calibrated(tmp_path: Path) -> None:
    """After an eject the standby is calibrated for the convict's stage before it computes, and the run completes."""
    plan = AttackPlan.from_cli("noise", "1", 1.0, 1).to_json()
    config = tiny_config(
        stages=3,
        microbatches=1,
        standby=1,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        spot_check_compare="tolerance",
        response="eject",
    )
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and [d["worker"] for d in summary["detections"]] == ["s1r0"]
    calibrations = _events(run, "calibration")
    assert [(e["worker"], e["stage"]) for e in calibrations] == [("s0r0", 0), ("s1r0", 1), ("s2r0", 2), ("standby0", 1)]
    assert calibrations[-1]["accepted"] and calibrations[-1]["at_step"] == 1
    assert summary["spot_check_tolerance"][1]["worker"] == "standby0"
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    taken = events.index("ejected")
    assert events.index("calibration", taken) < events.index("spot_check_commitment", taken)
    assert audit_run_dir(run).clean


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_resumed_run_recalibrates_every_stage(tmp_path: Path) -> None:
    """After a worker is killed the run resumes with the standby, and every stage is calibrated again."""
    config = tiny_config(
        steps=3, standby=1, verification="spot_check", spot_check_rate=1.0, spot_check_compare="tolerance", **FAST
    )
    run = tmp_path / "run"
    killed: list[int] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event.get("step") == 1 and not killed:
            rows = json.loads((run / "workers.json").read_text(encoding="utf-8"))["workers"]
            killed.append(next(int(r["pid"]) for r in rows if r["role"] == "stage" and r["stage"] == 1))
            os.kill(killed[0], signal.SIGKILL)

    summary = launch_local(config, run, on_event=on_event).summary
    assert killed and summary["status"] == "completed" and summary["detections"] == []
    assert [(r["worker"], r["by"]) for r in summary["replacements"]] == [("s1r0", "standby0")]
    calibrations = [(e["session"], e["worker"], e["stage"]) for e in _events(run, "calibration")]
    assert calibrations == [(0, "s0r0", 0), (0, "s1r0", 1), (1, "s0r0", 0), (1, "standby0", 1)]
    assert [t["worker"] for t in summary["spot_check_tolerance"]] == ["s0r0", "standby0"]
    assert audit_run_dir(run).clean


@pytest.mark.slow
def test_a_worker_beyond_the_cap_is_refused(tmp_path: Path) -> None:
    """A worker off by a relative 1e-3 needs a tolerance of 1e-2: it is refused, named with its error and the cap."""
    run = tmp_path / "run"
    config = tiny_config(verification="spot_check", spot_check_compare="tolerance")
    with pytest.raises(LaunchError, match=r"s1r0 \(stage 1\) was refused: .*relative error of 0\.001.*cap of 0\.001"):
        launch_local(config, run, env={NUMERICS_ENV: "1:1e-3"})
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "refused" and summary["steps_completed"] == 0
    [refused] = _events(run, "refused")
    assert (refused["worker"], refused["code"]) == ("s1r0", "TOLERANCE_ABOVE_CAP")
    assert summary["spot_check_tolerance"][1]["accepted"] is False
    assert summary["checkpoints"] == []
