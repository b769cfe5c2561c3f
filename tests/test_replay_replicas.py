"""Specs with data-parallel replicas, ``replicate`` and ``robust_aggregation`` drive real runs:
``train --spec`` takes them, and ``replay`` mounts counterexamples that need them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from stagewarden.cli import cli
from stagewarden.replay import plan_replay
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.spec import load_example, load_spec
from stagewarden.spec_settings import spec_settings

#: Three copies of a three-stage pipeline compared by majority, two colluding malicious workers.
COPIES_SPEC = """\
version: 1
name: replicate-two-colluding-copies
description: Three copies of every unit compared by majority; two malicious workers collude.
topology:
  stages: 3
  replicas: 1
  microbatches: 2
  steps: 100
trust:
  honest: [0, 2]
adversary:
  max_malicious: 2
  collusion: true
  capabilities:
    - tamper_activations
defense:
  receipts: true
  attestation: true
  checks:
    - scheme: replicate
      factor: 3
      resolve: majority
guarantees:
  - id: integrity
    kind: detection
  - id: fair
    kind: no_framing
"""


def test_a_spec_maps_its_replicas_replicate_and_robust_aggregation_onto_the_run(tmp_path: Path) -> None:
    """The replicate check becomes ``verification: replicate`` with its factor and resolution;
    ``robust_aggregation`` the aggregation rule; ``topology.replicas`` the replicas."""
    spec = tmp_path / "copies.yaml"
    spec.write_text(COPIES_SPEC)
    settings = spec_settings(load_spec(str(spec)))
    assert (settings["verification"], settings["replicate_factor"], settings["replicate_resolve"]) == (
        "replicate",
        3,
        "majority",
    )
    assert settings["replicas"] == 1
    median = spec_settings(load_example("robust-aggregation-median"))
    assert (median["replicas"], median["aggregation"]) == (4, "median")
    assert "verification" not in median


def test_two_colluding_copies_map_to_one_attack_in_two_pipelines() -> None:
    """The detection trace's tamperer ``1:0`` and the copy covering for it ``1:0#1`` tamper alike:
    one plan on stage 1 of pipelines 0 and 1 (copies 0 and 1 of replica 0)."""
    plan = plan_replay(load_example("robust-aggregation-median-two"), "damage", steps=3)
    attack = AttackPlan.from_json(plan.config.attack)
    assert plan.config.replicas == 4 and plan.config.aggregation == "median"
    assert attack.stages == {1} and attack.pipelines == {0, 1}


def test_replay_shows_two_colluding_copies_outvote_the_honest_one(tmp_path: Path) -> None:
    """Replaying the no-framing counterexample: copies 0 and 1 of stage 1 return the same wrong
    output, the vote goes against the honest copy 2, which is blamed, as the trace predicts;
    the detection counterexample of the same run: the tampered units go undetected."""
    spec = tmp_path / "copies.yaml"
    spec.write_text(COPIES_SPEC)
    for guarantee in ("fair", "integrity"):
        out = tmp_path / guarantee
        args = ["replay", str(spec), "--guarantee", guarantee, "--no-defence", "--steps", "2", "--out", str(out)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        replayed = json.loads((out / "replay.json").read_text())
        assert replayed["attack"]["shows_prediction"] is True
        assert replayed["attack"]["framed"] == 1 and replayed["attack"]["undetected"] > 0
        summary = json.loads((out / "attack" / "summary.json").read_text())
        assert [d["worker"] for d in summary["detections"]] == ["s1r0c2"]


def test_train_from_a_spec_runs_its_replicas_and_conforms(tmp_path: Path) -> None:
    """``train --spec`` on a spec with two replicas and a median: the run has two replicas
    aggregated by median, and the run directory audits clean."""
    spec = tmp_path / "replicas.yaml"
    spec.write_text(
        COPIES_SPEC.replace("replicas: 1", "replicas: 2")
        .replace("stages: 3", "stages: 2")
        .replace("honest: [0, 2]", "honest: [0, 1]")
        .replace(
            "    - scheme: replicate\n      factor: 3\n      resolve: majority\n",
            "    - scheme: robust_aggregation\n      rule: median\n",
        )
    )
    out = tmp_path / "run"
    args = ["train", "--spec", str(spec), "--steps", "2", "--n-layer", "2", "--n-embd", "32", "--block-size", "16"]
    result = CliRunner().invoke(cli, [*args, "--batch-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["config"]["replicas"], summary["config"]["aggregation"], summary["replicas"]) == (2, "median", 2)
    assert CliRunner().invoke(cli, ["audit", str(out)]).exit_code == 0
