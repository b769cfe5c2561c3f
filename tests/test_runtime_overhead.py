"""The runtime-overhead benchmark's own logic: the protocol's per-step operations, the probe's
records, the side-by-side ratios and verdicts, the sweep's shape, and a quick run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from overhead_baselines import Job  # noqa: E402
from overhead_limit import Operation, Shape, limit_seconds, receipt_operations, spot_check_operations  # noqa: E402
from overhead_probe import read_probe, step_timings  # noqa: E402
from overhead_summary import paired_ratios, round_order, slowest, sweep_row, verdict  # noqa: E402
from runtime_overhead import BASE_JOB, sweep_points, timed_steps  # noqa: E402

SHAPE = Shape(stages=4, microbatches=8, batch_size=8, block_size=64, n_embd=128, stage_parameters=(10, 20, 20, 30))


def _count(ops: list[Operation], name: str) -> float:
    return sum(op.count for op in ops if op.name.startswith(name))


def test_receipt_operations_follow_the_units_the_coordinator_samples() -> None:
    """One receipt signature and verification per unit the coordinator knows of, plus a signed
    header per transfer, digested by both sides and verified by the receiver and the coordinator."""
    from stagewarden.run_history import eligible_units

    ops = receipt_operations(SHAPE)
    units = len(eligible_units(4, 8, None))
    transfers = 2 * 3 * 8
    assert _count(ops, "Ed25519 sign") == transfers + units
    assert _count(ops, "Ed25519 verify") == 2 * transfers + units
    transfer_digests = [op for op in ops if op.name.startswith("digest: transfers")]
    assert [(op.count, op.nbytes) for op in transfer_digests] == [(2 * transfers, 8 * 64 * 128 * 4)]
    trace = {op.stage: (op.count, op.nbytes) for op in ops if op.name == "digest: gradient trace"}
    assert trace == {0: (8, 40), 1: (8, 80), 2: (8, 80), 3: (8, 120)}
    update = {op.stage: op.nbytes for op in ops if op.name.startswith("digest: weights and AdamW")}
    assert update == {0: 120, 1: 240, 2: 240, 3: 360}


def test_spot_checks_re_execute_a_share_p_of_the_units() -> None:
    """On average ``p`` of every stage's units are re-executed and their weights digested."""
    ops = spot_check_operations(SHAPE, 0.05)
    reexecuted = _count(ops, "re-execute")
    assert reexecuted == pytest.approx(0.05 * 4 * 17)
    assert _count(ops, "digest: a sampled unit's weights") == pytest.approx(0.05 * 4 * 17)


def test_the_limit_is_count_times_price_summed() -> None:
    """Each operation name adds ``count x price``; the total is their sum."""
    ops = [Operation("a", 2, 10), Operation("a", 1, 30), Operation("b", 4)]
    limit = limit_seconds(ops, lambda op: op.nbytes / 10 + 1)
    assert limit == {"a": 2 * 2 + 1 * 4, "b": 4, "total": 12}


def test_idle_prices_measure_every_operation_of_a_small_job() -> None:
    """Every operation of a small job gets a positive idle price; the stages' sizes add up to the whole model's."""
    from overhead_limit import IdlePrices

    job = Job(stages=2, n_layer=2, n_embd=32, microbatches=2, batch_size=2, steps=2, max_bytes=64 * 1024)
    prices = IdlePrices(job, repeat=1)
    shape = prices.shape()
    from stagewarden.runtime.model import GPT

    whole = GPT(job.run_config().model, job.seed)
    assert sum(shape.stage_parameters) == sum(p.numel() for p in whole.parameters())
    ops = receipt_operations(shape) + spot_check_operations(shape, 0.5)
    assert all(prices(op) > 0 for op in ops)
    assert limit_seconds(ops, prices)["total"] > 0


def _step(step: int, at: float, seconds: float) -> dict[str, Any]:
    import datetime as dt

    when = dt.datetime.fromtimestamp(at, tz=dt.UTC).isoformat()
    return {"event": "step", "step": step, "time": when, "seconds": seconds}


def test_step_timings_take_the_wall_time_after_the_warm_up_step() -> None:
    """Wall time runs from step 0's event to the last one's; a gap is what lies outside a step's timer."""
    events = [
        {"event": "run_started"},
        _step(0, 100.0, 2.0),
        _step(1, 101.0, 0.75),
        {"event": "x"},
        _step(2, 102.5, 1.25),
    ]
    timings = step_timings(events)
    assert timings["wall_seconds"] == pytest.approx(2.5)
    assert timings["timed_steps"] == 2
    assert timings["gaps_seconds"] == pytest.approx([0.25, 0.25])
    with pytest.raises(ValueError):
        step_timings(events[:2])


def _record(folder: Path, rank: int, start: float | None, end: float | None, barriers: list[list[float]]) -> None:
    data = {"rank": str(rank), "start_cpu": start, "end_cpu": end, "barriers": barriers, "probed": True}
    (folder / f"probe-{rank}.json").write_text(json.dumps(data), encoding="utf-8")


def test_probe_records_sum_every_rank_and_keep_the_timed_barriers(tmp_path: Path) -> None:
    """CPU per step is summed over the ranks; the barrier before step 0 (admission) is left out."""
    _record(tmp_path, 0, 1.0, 3.0, [[0, 9.0], [1, 0.02], [2, 0.04]])
    _record(tmp_path, 1, 5.0, 9.0, [])
    probe = read_probe(tmp_path, processes=2, timed_steps=2)
    assert probe["cpu_seconds_per_step"] == pytest.approx(3.0)
    assert probe["rank_cpu_seconds_per_step"] == {"0": 1.0, "1": 2.0}
    assert probe["barrier_seconds"] == [0.02, 0.04]


def test_a_missing_or_unmarked_probe_record_reports_nothing(tmp_path: Path) -> None:
    """A rank without a record, or one that never saw step 1, makes the CPU figures unavailable."""
    _record(tmp_path, 0, 1.0, 3.0, [])
    assert read_probe(tmp_path, processes=2, timed_steps=2)["cpu_seconds_per_step"] is None
    _record(tmp_path, 1, None, 3.0, [])
    assert read_probe(tmp_path, processes=2, timed_steps=2)["barrier_seconds"] is None


def test_rounds_alternate_and_ratios_pair_runs_of_the_same_round() -> None:
    """Odd rounds run the settings in reverse; each ratio divides runs made side by side."""
    assert round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert round_order(["a", "b", "c"], 1) == ["c", "b", "a"]
    runs = {
        "none": [{"tokens_per_second": 100.0}, {"tokens_per_second": 50.0}],
        "x": [{"tokens_per_second": 90.0}, {"tokens_per_second": 50.0}],
    }
    assert paired_ratios(runs, "x", "none") == [0.9, 1.0]


def _point(targets: bool) -> dict[str, Any]:
    def run(tps: float, cpu: float | None) -> dict[str, Any]:
        return {"tokens_per_second": tps, "cpu_seconds_per_step": cpu}

    return {
        "targets": targets,
        "runs": {
            "none": [run(100, 1.0), run(100, 1.0), run(100, 1.0)],
            "receipts": [run(99, 1.02), run(97, 1.04), run(99, 1.03)],
        },
    }


def test_sweep_rows_judge_ratio_and_cpu_against_their_targets() -> None:
    """The median ratio meets 0.98 while the slowest round is reported; the added CPU (30 ms, the
    median of the paired differences) is within 1.5 times a 25 ms limit and twice a 15 ms one."""
    row = sweep_row(_point(targets=True), "receipts", limit_ms=25.0)
    assert row["ratio"]["median"] == pytest.approx(0.99) and row["ratio"]["slowest"] == pytest.approx(0.97)
    assert row["ratio_verdict"] == "meets"
    assert row["added_cpu_ms_per_step"] == pytest.approx(30.0)
    assert row["cpu_verdict"] == "meets"
    over = sweep_row(_point(targets=False), "receipts", limit_ms=15.0)
    assert over["cpu_verdict"] == "misses" and over["ratio_verdict"] == "-"
    worst = slowest([row, {**over, "ratio": {"slowest": 0.5}}])
    assert worst is not None and worst["ratio"]["slowest"] == 0.5


def test_verdicts_without_a_target_or_a_figure_are_dashes() -> None:
    """Nothing measured, or no target, gives ``-``; bounds are inclusive."""
    assert verdict(None, minimum=1.0) == "-"
    assert verdict(0.5) == "-"
    assert verdict(1.0, minimum=1.0) == "meets" and verdict(0.99, minimum=1.0) == "misses"


def test_the_sweep_covers_widths_batches_and_stages_of_a_16_layer_model() -> None:
    """Width 128/256/512 by B 8/32 at 4 stages; 2, 4, 8, 16 stages of 16 layers; 3 to 10 timed steps."""
    points = sweep_points(quick=False)
    widths = [(j.n_embd, j.batch_size) for g, j in points if g == "width"]
    assert widths == [(128, 8), (128, 32), (256, 8), (256, 32), (512, 8), (512, 32)]
    stages = [(j.stages, j.n_layer) for g, j in points if g == "stages"]
    assert stages == [(2, 16), (4, 16), (8, 16), (16, 16)]
    assert all(4 <= j.steps <= 11 for _, j in points)
    assert [j.n_embd for g, j in sweep_points(quick=False, widths=(512,)) if g == "width"] == [512, 512]
    assert timed_steps(BASE_JOB) == 10
    assert timed_steps(Job(stages=4, n_layer=4, n_embd=512, microbatches=4, batch_size=32, steps=2)) == 3


def test_the_fixed_job_takes_another_schedule_and_settings() -> None:
    """``job`` (shared with ``security_cpu.py``) is the baseline job, with the schedule and settings asked for."""
    from runtime_overhead import NO_SECURITY, job

    config = job(False, 5, schedule="gpipe", **NO_SECURITY)
    assert (config.schedule, config.steps, config.receipts, config.stages, config.model.n_layer) == (
        "gpipe",
        5,
        False,
        4,
        8,
    )
    assert job(True, 3).schedule == "1f1b"


def _benchmark(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "runtime_overhead.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ),
    )


@pytest.mark.parametrize(
    "args", [("--parts", "bogus"), ("--rounds", "0"), ("--parts", ""), ("--widths", "512,x"), ("--widths", "30")]
)
def test_bad_options_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    """An unknown part, a round count below one or a width the heads cannot split is refused before anything runs."""
    done = _benchmark(*args)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error:")


@pytest.mark.slow
def test_quick_sweep_measures_ratios_cpu_and_barrier(tmp_path: Path) -> None:
    """A quick sweep runs every setting, reads every rank's probe, and draws the figure."""
    out, figure = tmp_path / "overhead.json", tmp_path / "overhead.png"
    done = _benchmark("--quick", "--parts", "sweep", "--json", str(out), "--figure", str(figure), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert figure.stat().st_size > 0
    assert len(data["sweep"]) == 2 and len(data["load_average_start"]) == 3
    for point in data["sweep"]:
        assert {r["setting"] for r in point["rows"]} == {"receipts", "spot_check"}
        for runs in point["runs"].values():
            (run,) = runs
            assert run["tokens_per_second"] > 0 and run["cpu_seconds_per_step"] > 0
            assert run["barrier_seconds"] and all(b >= 0 for b in run["barrier_seconds"])
        assert point["runs"]["none"][0]["losses"] == point["runs"]["receipts"][0]["losses"]
