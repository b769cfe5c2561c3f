"""``stagewarden replay``: prover counterexamples mounted as live attacks, then against a proposed defence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stagewarden.cli import cli
from stagewarden.replay import ReplayError, plan_replay, without_budgets
from stagewarden.report import build_report
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.spec import load_example


def test_adjacent_collusion_maps_to_a_tamperer_and_a_covering_checker() -> None:
    plan = plan_replay(load_example("paper-adjacent-collusion"), "integrity", steps=3)
    attack = AttackPlan.from_json(plan.config.attack)
    assert attack.kind.value == "reverse" and attack.direction.value == "forward"
    assert len(attack.stages) == 1 and attack.covers == {min(attack.stages) + 1}
    assert plan.config.verification == "redundant_neighbour" and not plan.config.receipts
    assert plan.config.stages == 6 and plan.config.steps == 3


def test_checked_worker_relay_maps_to_a_forged_input() -> None:
    plan = plan_replay(load_example("paper-checked-worker-relay"), "integrity", steps=3)
    attack = AttackPlan.from_json(plan.config.attack)
    assert attack.direction.value == "input" and plan.config.input_via == "checked_worker"


def test_equivocation_trace_maps_to_the_equivocate_attack() -> None:
    plan = plan_replay(load_example("paper-equivocation-upstream"), "no-framing", steps=3)
    attack = AttackPlan.from_json(plan.config.attack)
    assert attack.kind.value == "equivocate" and plan.config.input_via == "upstream"
    assert "honest worker" in plan.prediction


def test_guarantees_without_an_attack_are_refused() -> None:
    loaded = load_example("paper-adjacent-collusion")
    with pytest.raises(ReplayError, match="no guarantee 'nope'"):
        plan_replay(loaded, "nope", steps=3)
    with pytest.raises(ReplayError, match="holds: there is no attack trace"):
        plan_replay(loaded, "no-framing", steps=3)
    with pytest.raises(ReplayError, match="overhead"):
        plan_replay(loaded, "cheap", steps=3)


def test_the_defence_search_drops_overhead_budgets_or_keeps_one_guarantee() -> None:
    loaded = load_example("paper-adjacent-collusion")
    kinds = {g.id: g.kind for g in loaded.spec.guarantees}
    relaxed = without_budgets(loaded, "integrity")
    assert [g.id for g in relaxed.spec.guarantees] == [i for i, k in kinds.items() if k != "overhead"]
    alone = without_budgets(loaded, "integrity", keep_others=False)
    assert [g.id for g in alone.spec.guarantees] == ["integrity"]
    assert alone.spec.defense == loaded.spec.defense


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["replay", "--example", "paper-adjacent-collusion", "--guarantee", "no-framing", "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 2 and "holds" in result.output
    result = CliRunner().invoke(cli, ["replay", "--example", "no-such-example", "--guarantee", "x", "--out", "r"])
    assert result.exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("example", "guarantee"),
    [
        ("paper-adjacent-collusion", "integrity"),
        ("paper-checked-worker-relay", "integrity"),
        ("paper-equivocation-upstream", "no-framing"),
        ("spot-check-eject", "damage"),
    ],
)
def test_replay_shows_the_attack_and_the_proposed_defence_catches_it(
    tmp_path: Path, example: str, guarantee: str
) -> None:
    out = tmp_path / "replay"
    args = ["replay", "--example", example, "--guarantee", guarantee, "--steps", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    payload = json.loads((out / "replay.json").read_text())
    if json.loads((out / "defended" / "summary.json").read_text())["status"] == "stopped":
        # the trace's attackers hold a stage no response can route around (the first or the
        # last): a defence that stops training is said to stop the run, not the attack
        assert payload["defended"]["caught"] is False and result.exit_code == 1
        assert "the proposed defence stopped the run" in " ".join(result.output.split())
        return
    assert payload["defended"]["caught"] is True
    attack = payload["attack"]
    if example == "spot-check-eject" and attack["detections"] > 0:
        # Under a 5% spot check the sample sometimes catches a tampered step (commit-then-sample
        # draws fresh randomness). The detected step is recomputed without the convict, so its
        # tampered units never reach the model; those of an earlier step the sample missed stay
        # (the standby resumes from that step's checkpoint, which the sample passed), and then the
        # run still shows the prediction.
        assert attack["in_model"] < attack["tampered"]
        assert attack["shows_prediction"] is (attack["in_model"] > 0)
        assert result.exit_code == (0 if attack["shows_prediction"] else 1), result.output
        return
    assert result.exit_code == 0, result.output
    assert attack["shows_prediction"] is True
    if example == "paper-equivocation-upstream":
        assert payload["attack"]["framed"] >= 1 and payload["defended"]["framed"] == 0
    else:
        assert payload["attack"]["undetected"] >= 1 or payload["attack"]["in_model"] >= 1
    if example == "paper-adjacent-collusion":  # the report of a real replay
        index = build_report(load_example(example), [], tmp_path / "report", replays=[out])
        text = (index.parent / "replays.html").read_text(encoding="utf-8")
        assert "integrity" in text and "replayed" in text
        assert (index.parent / "run-1.html").is_file() and (index.parent / "run-2.html").is_file()


FALSE_ACCUSATION_SPEC = """\
version: 1
name: false-accusation
topology: {stages: 3, replicas: 1, microbatches: 2, steps: 100}
adversary: {max_malicious: 1, capabilities: [false_accuse, tamper_activations]}
defense:
  receipts: false
  attestation: true
  checks: [{scheme: redundant_neighbour, input_via: coordinator}]
  response: [restart]
guarantees:
  - {id: no-framing, kind: no_framing}
"""


@pytest.mark.slow
def test_a_defence_without_checking_workers_removes_false_accusation(tmp_path: Path) -> None:
    """A no_framing counterexample by false accusation, against a proposed defence that leaves no
    checking worker to accuse with: the replay says the defence removes the capability (exit 0)
    instead of failing to mount the attack, and replay.json records why."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(FALSE_ACCUSATION_SPEC)
    out = tmp_path / "replay"
    result = CliRunner().invoke(
        cli, ["replay", str(spec), "--guarantee", "no-framing", "--steps", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "the proposed defence removes the capability" in " ".join(result.output.split())
    payload = json.loads((out / "replay.json").read_text())
    assert payload["attack"]["shows_prediction"] is True and payload["attack"]["framed"] >= 1
    assert payload["defended"]["caught"] is True and payload["defended"]["run"] is None
    assert "false_accuse needs checking workers" in payload["defended"]["removed"]
