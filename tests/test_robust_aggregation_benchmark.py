"""The robust-aggregation benchmark: its design, its evaluation of a final model, its damage and
noise bookkeeping, and one tiny real run end to end (two multi-process trainings) with its JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from robust_aggregation import (  # noqa: E402
    MALICIOUS_STAGE,
    MODEL,
    STAGES,
    Options,
    Setting,
    main,
    parse_options,
    run_config,
    settings,
    summarise,
    table_rst,
    validation_batches,
    validation_loss,
)

from stagewarden.runtime.model import GPT, build_stages  # noqa: E402


def test_the_default_design_attacks_one_replica_of_five_under_every_rule() -> None:
    """(4 rules at R = 5 and R = 1) x (clean, forward, backward) x 2 seeds, seed by seed."""
    runs = settings(Options())
    assert len(runs) == len({s.name for s in runs}) == 5 * 3 * 2
    assert {s.rule for s in runs if s.replicas == 5} == {"mean", "median", "trimmed_mean", "krum"}
    assert [s.direction for s in runs if s.replicas == 1] == [None, "forward", "backward"] * 2
    assert [s.seed for s in runs] == [0] * 15 + [1] * 15
    attacked = run_config(Setting(5, "krum", "backward", 0), steps=7)
    assert (attacked.replicas, attacked.aggregation, attacked.verification) == (5, "krum", "none")
    assert attacked.steps == 8 and attacked.checkpoint_every == 7  # the checkpoint after 7 updates
    plan = attacked.attack
    assert plan is not None and plan["stages"] == [MALICIOUS_STAGE] and plan["pipelines"] == [1]
    assert plan["kind"] == "reverse" and plan["direction"] == "backward" and plan["rate"] == 1.0
    single = run_config(Setting(1, "mean", "forward", 0), steps=7).attack
    assert single is not None and "pipelines" not in single  # pipeline 0, the only one
    assert run_config(Setting(5, "mean", None, 1), steps=7).attack is None


def test_validation_loss_of_the_stages_equals_the_whole_model() -> None:
    """The stages chained on the fixed validation windows give the full GPT's mean loss."""
    batches = validation_batches()[:3]
    again = validation_batches()[:3]  # fixed windows: every run is evaluated on the same ones
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    model = GPT(MODEL, seed=4)
    with torch.no_grad():
        whole = float(torch.stack([model.loss(model(x), y) for x, y in batches]).mean())
    assert validation_loss(build_stages(MODEL, STAGES, 4), batches) == pytest.approx(whole, rel=1e-5)
    assert abs(whole - math.log(256)) < 0.5  # an untrained byte model is near uniform


def _run(rule: str, direction: str | None, seed: int, val: float | None, train: float = 4.0) -> dict[str, Any]:
    return {
        "replicas": 5,
        "rule": rule,
        "direction": direction,
        "seed": seed,
        "validation_loss": val,
        "final_train_loss": train,
    }


def test_damage_is_paired_by_seed_and_noise_is_the_clean_spread() -> None:
    """Damage = attacked - clean of the same seed, averaged; within noise when its size is at most
    the clean runs' spread over the seeds; a failed run's seed drops out of the pairs."""
    runs = [
        _run("median", None, 0, 3.0),
        _run("median", None, 1, 3.1),
        _run("median", "forward", 0, 3.02),
        _run("median", "forward", 1, 3.2),
        _run("median", "backward", 0, 3.5, train=6.0),
        _run("median", "backward", 1, None, train=7.0),
        _run("mean", None, 0, 3.0),
        _run("mean", "forward", 0, None),
    ]
    forward, backward, failed = summarise(runs)
    assert forward["damage_per_seed"] == pytest.approx([0.02, 0.1]) and forward["damage"] == pytest.approx(0.06)
    assert forward["noise"] == pytest.approx(0.1) and forward["within_noise"] is True and forward["tolerated"] == 2
    assert forward["clean_validation_loss"] == pytest.approx(3.05) and forward["seeds"] == [0, 1]
    assert backward["seeds"] == [0] and backward["damage"] == pytest.approx(0.5)
    assert backward["within_noise"] is False and backward["attacked_final_train_loss"] == 6.0
    assert failed["damage"] is None and failed["noise"] is None and failed["within_noise"] is None
    table = table_rst([forward, backward, failed])
    assert "+0.060 (+0.020, +0.100)" in table and "**no**" in table and "``median`` (2)" in table


@pytest.mark.parametrize(
    "argv",
    [
        ["--rules", "krum", "--replicas", "2"],
        ["--rules", "mode"],
        ["--directions", "sideways"],
        ["--replicas", "1"],
        ["--steps", "0"],
    ],
)
def test_bad_options_exit_2_before_anything_runs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A rule the replicas cannot run, an unknown rule or direction, or a zero count: one line, exit 2."""
    assert main([*argv, "--out", "/nonexistent/never.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("robust_aggregation: ")


def test_quick_options_are_the_smoke_size() -> None:
    """--quick is 3 replicas, median, forward, 2 steps, seed 0; explicit flags override it."""
    options, out = parse_options(["--quick", "--no-single", "--steps", "3"])
    assert options == Options(steps=3, replicas=3, rules=("median",), directions=("forward",), seeds=1, single=False)
    assert out.name == "robust_aggregation.json"


def test_a_tiny_run_writes_the_json(tmp_path: Path) -> None:
    """Two real trainings (R = 3, median, clean and forward-attacked, 2 updates): every run
    completes, its final model is evaluated, and the JSON carries command, load, torch and times."""
    out = tmp_path / "ra.json"
    assert main(["--quick", "--no-single", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["format"] == "stagewarden.robust_aggregation" and data["torch"] == torch.__version__
    assert data["command"].endswith("--quick --no-single --out " + str(out))
    assert len(data["machine"]["load_average_at_start"]) == 3 and data["total_seconds"] > 0
    clean, attacked = data["runs"]
    for run in (clean, attacked):
        assert run["status"] == "completed" and run["detections"] == 0
        assert len(run["train_losses"]) == 3 and run["final_train_loss"] == run["train_losses"][2]
        assert math.isfinite(run["validation_loss"]) and run["wall_seconds"] > 0
    # the negated activations of replica 1 reach the loss of the very first step
    assert attacked["first_train_loss"] != clean["first_train_loss"]
    (row,) = data["rows"]
    assert row["damage"] == pytest.approx(attacked["validation_loss"] - clean["validation_loss"])
    assert row["noise"] is None and row["seeds"] == [0] and row["within_noise"] is None
    assert data["slowest_run"]["name"] in {clean["name"], attacked["name"]}
