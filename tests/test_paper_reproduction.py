"""The paper-reproduction benchmark's bookkeeping: its configurations, its aggregation over seeds
and its table (the runs themselves are multi-process training, measured by the benchmark)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper_reproduction import RESTART_RECOMPUTATIONS, Setting, aggregate, all_settings, main, run_config, table_rst  # noqa: E402


def test_the_full_design_has_25_configurations() -> None:
    """Clean plus 2 attacks x 2 directions x 2 rates x 3 defences, with distinct names."""
    names = [s.name for s in all_settings()]
    assert len(names) == len(set(names)) == 25
    assert names[0] == "clean" and "random-backward-0.5-skip_stage" in names


def test_run_configs_put_the_attack_on_stage_1_under_the_defence() -> None:
    """A defended setting runs redundant_neighbour with its response; the attack seed is the run's."""
    config = run_config(Setting("reverse", "backward", 0.5, "skip_stage"), 2, 200, receipts=True)
    assert (config.verification, config.response, config.seed, config.steps) == (
        "redundant_neighbour",
        "skip_stage",
        2,
        200,
    )
    assert config.attack is not None and config.attack["stages"] == [1] and config.attack["seed"] == 2
    assert config.attack["per"] == "step"  # the paper's rate is per iteration
    assert "per" not in (run_config(Setting("reverse"), 0, 5, receipts=False, per="unit").attack or {"per": 1})
    assert run_config(Setting(), 0, 5, receipts=False).attack is None
    restart = run_config(Setting("reverse", "forward", 0.5, "restart"), 0, 5, receipts=False)
    assert restart.response == "restart" and restart.max_recomputations == RESTART_RECOMPUTATIONS > 3


def test_rows_compare_each_setting_with_clean() -> None:
    """Means over seeds; a stopped run counts with the loss it reached and not as completed."""
    runs = [
        {
            "setting": "clean",
            "status": "completed",
            "losses": [3.0, 2.0],
            "detections": 0,
            "recomputed_steps": 0,
            "computations": 2,
            "step_seconds": [1.0, 1.5],
            "wall_seconds": 10.0,
        },
        {
            "setting": "x-restart",
            "status": "stopped",
            "losses": [3.0],
            "detections": 4,
            "recomputed_steps": 1,
            "computations": 5,
            "step_seconds": [2.0],
            "wall_seconds": 4.0,
        },
        {
            "setting": "x-restart",
            "status": "stopped",
            "losses": [],
            "detections": 4,
            "recomputed_steps": 1,
            "computations": 4,
            "step_seconds": [],
            "wall_seconds": 2.0,
        },
    ]
    clean, restart = aggregate(runs, steps=2)
    assert clean["completed"] == 1 and clean["final_loss"] == 2.0
    assert restart["completed"] == 0 and restart["final_loss"] == 3.0 and restart["vs_clean_percent"] == 50.0
    assert restart["steps_reached"] == 0.5 and restart["wall_seconds"] == 3.0
    assert clean["computations"] == 2.0 and clean["training_seconds"] == 2.5
    assert restart["computations"] == 4.5 and restart["training_seconds"] == 1.0
    table = table_rst([clean, restart])
    assert "``x-restart``" in table and "+50.0%" in table and "0 / 2" in table
    nothing = aggregate([{**runs[2]}], steps=2)[0]
    assert math.isnan(nothing["final_loss"]) and "no step completed" in table_rst([nothing])


def test_unknown_configurations_are_bad_input(capsys: object) -> None:
    """An unknown name exits 2 before anything runs."""
    assert main(["--configs", "reverse-sideways-2-none", "--out", "/nonexistent/never"]) == 2


def test_step_computations_count_the_stopping_one() -> None:
    """Every completed step, one per response, and the last computation of a run that stopped on
    a detection (it got no response)."""
    from types import SimpleNamespace

    from paper_reproduction import computations

    completed = SimpleNamespace(losses=[1.0] * 5, responses=[object()] * 3, status="completed", detections=[1])
    stopped = SimpleNamespace(losses=[], responses=[object()] * 20, status="stopped", detections=[1] * 84)
    assert computations(completed) == 8  # type: ignore[arg-type]
    assert computations(stopped) == 21  # type: ignore[arg-type]
    assert computations(None) == 0
