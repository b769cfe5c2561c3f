"""``stagewarden train`` driven in-process with click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from distributed_helpers import DATA, reference, tiny_config

from stagewarden.cli import cli

TINY_FLAGS = ["--n-layer", "4", "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--data", DATA]


def test_train_one_f_one_b_two_stages(tmp_path: Path) -> None:
    """A CLI run (S=2, 1F1B) exits 0, prints the summary and reproduces the reference losses; audit passes."""
    out = tmp_path / "run"
    args = [
        "train",
        "--stages",
        "2",
        "--microbatches",
        "2",
        "--steps",
        "2",
        "--schedule",
        "1f1b",
        *TINY_FLAGS,
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "tokens/s" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["losses"] == reference(tiny_config(schedule="1f1b"))[0]
    audit = CliRunner().invoke(cli, ["audit", str(out)])
    assert audit.exit_code == 0, audit.output


def test_train_refuses_non_empty_out(tmp_path: Path) -> None:
    """An existing non-empty --out is refused with exit code 2 unless --force is given."""
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--force" in result.output


def test_train_bad_setting_exits_2(tmp_path: Path) -> None:
    """An impossible topology is bad input (exit code 2), not a traceback."""
    result = CliRunner().invoke(cli, ["train", "--stages", "9", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "n_layer" in result.output


def test_train_attacked_with_spot_check_and_restart(tmp_path: Path) -> None:
    """--attack reverse --malicious 1 with spot checks at p=1 and restart: detected, recomputed, then
    stopped (the attacker fires on every recomputation); exit code 1 and the detection in the table."""
    out = tmp_path / "run"
    args = ["train", "--stages", "3", "--microbatches", "1", "--steps", "2", "--schedule", "gpipe", *TINY_FLAGS]
    args += ["--attack", "reverse", "--malicious", "1", "--attack-start", "1", "--verification", "spot_check"]
    args += ["--spot-check-rate", "1", "--response", "restart", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "stopped: no honest path" in result.output and "restart x 3 (step 1)" in result.output
    assert "reverse (forward) on stage 1" in result.output and "4 detected" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["detections"][0]["worker"] == "s1r0"
    assert summary["stop_reason"].startswith("no honest path through step 1")


def test_train_restart_with_a_per_step_rate_and_a_recomputation_limit(tmp_path: Path) -> None:
    """--attack-per step draws once per step computation and --max-recomputations bounds the
    restarts: both reach the run (summary's configuration and attack plan), and a limit of 0 stops
    the run at the first tampered computation."""
    out = tmp_path / "run"
    args = ["train", "--stages", "3", "--microbatches", "2", "--steps", "2", "--schedule", "gpipe", *TINY_FLAGS]
    args += ["--attack", "reverse", "--malicious", "1", "--attack-per", "step", "--verification", "spot_check"]
    args += ["--spot-check-rate", "1", "--response", "restart", "--max-recomputations", "0", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["max_recomputations"] == 0 and summary["config"]["attack"]["per"] == "step"
    assert summary["stop_reason"].startswith("no honest path through step 0")
    assert "in each of its 1 computations" in summary["stop_reason"]


def test_train_bad_attack_values_exit_2(tmp_path: Path) -> None:
    """Unknown kinds, rates out of range and missing stages are bad input (exit code 2)."""
    base = ["train", "--out", str(tmp_path / "run")]
    for extra, needle in (
        (["--attack", "melt", "--malicious", "1"], "'melt' is not one of 'reverse'"),
        (["--attack", "reverse", "--malicious", "0", "--attack-rate", "2"], "rate"),
        (["--attack", "reverse"], "--malicious"),
        (["--attack", "reverse", "--malicious", "1"], "sends no activation"),
        (["--spot-check-rate", "0", "--verification", "spot_check"], "spot_check_rate"),
        (["--attack", "reverse", "--malicious", "1", "--attack-per", "epoch"], "'epoch' is not one of 'unit'"),
        (["--max-recomputations", "1001"], "1001 is not in the range"),
    ):
        result = CliRunner().invoke(cli, base + extra)
        assert result.exit_code == 2 and needle in result.output, result.output


def test_train_redundant_neighbour_from_the_command_line(tmp_path: Path) -> None:
    """--verification redundant_neighbour --input-via upstream: a stage tampering from step 1 is
    caught by its neighbour; the table names the mode and what it recomputed."""
    out = tmp_path / "run"
    args = ["train", "--stages", "3", "--microbatches", "1", "--steps", "2", *TINY_FLAGS]
    args += ["--attack", "reverse", "--malicious", "1", "--attack-start", "1"]
    args += ["--verification", "redundant_neighbour", "--input-via", "upstream", "--response", "restart"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "redundant_neighbour via upstream" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["detections"][0]["worker"] == "s1r0"
    assert summary["detections"][0]["check"] == "redundant_neighbour"


def test_train_help_names_every_attack_kind() -> None:
    """``--attack``'s help lists every attack kind the runtime mounts (it is written out, so that
    the command line does not load torch)."""
    from stagewarden.runtime.attacks import AttackKind

    text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    listed = text.split("Mount this attack (", 1)[1].split(")", 1)[0]
    assert [k.strip() for k in listed.split(",")] == [k.value for k in AttackKind]
