"""``stagewarden audit --spec``: a run checked against its threat-model spec, and the binomial
intervals the check rests on.

One real two-stage run (spot checks at rate 1, so its sample is the same every time) is made once;
each test copies it and edits summary.json or events.jsonl to make the departure it checks.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from stagewarden.cli import cli
from stagewarden.cli.common import EXIT_BAD_INPUT, EXIT_OK, EXIT_VIOLATED
from stagewarden.confidence import binomial_cdf, clopper_pearson, regularized_beta, wilson
from stagewarden.conformance import ConformanceReport, check_conformance
from stagewarden.spec import load_spec, load_text
from stagewarden.spec_settings import spec_settings

sys.path.insert(0, str(Path(__file__).parent / "runtime"))
from distributed_helpers import tiny_config  # noqa: E402

SPEC = """\
version: 1
name: tiny
topology:
  stages: {stages}
  microbatches: 2
  steps: 3
  standby: {standby}
adversary:
  max_malicious: 1
  capabilities: [{capability}]
defense:
  receipts: true
  attestation: true
  checks:
    - scheme: spot_check
      rate: {rate}{extra_check}
  response: [{response}]
guarantees:
  - id: no-framing
    kind: no_framing
  - id: integrity
    kind: detection
  - id: damage
    kind: bounded_damage
    max_undetected: 2
    probability: 0.99
  - id: liveness
    kind: liveness
  - id: cheap
    kind: overhead
    max_compute: 2.0
"""
DEFAULTS = {
    "stages": 2,
    "standby": 0,
    "capability": "tamper_activations",
    "rate": 1.0,
    "extra_check": "",
    "response": "restart",
}


def write_spec(path: Path, **overrides: Any) -> Path:
    """The test spec, matching the fixture run unless ``overrides`` change it."""
    path.write_text(SPEC.format(**{**DEFAULTS, **overrides}))
    return path


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run: 2 stages, 2 micro-batches, 3 steps, receipts, attestation, spot checks at rate 1, restart."""
    from stagewarden.runtime.launch import launch_local

    path = tmp_path_factory.mktemp("conformance") / "run"
    config = tiny_config(steps=3, verification="spot_check", spot_check_rate=1.0, response="restart")
    launch_local(config, path)
    return path


@pytest.fixture
def run(real_run: Path, tmp_path: Path) -> Path:
    """A private copy of the real run, free to edit."""
    return Path(shutil.copytree(real_run, tmp_path / "run"))


def edit_summary(run: Path, change: Any) -> None:
    data = json.loads((run / "summary.json").read_text())
    change(data)
    (run / "summary.json").write_text(json.dumps(data))


def events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def write_events(run: Path, items: list[dict[str, Any]]) -> None:
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in items))


def conformance(run: Path, spec: Path) -> ConformanceReport:
    from stagewarden.attest.audit import audit_run_dir

    return check_conformance(run, load_spec(spec), audit_run_dir(run))


def codes(report: ConformanceReport, severity: str | None = None) -> set[str]:
    return {str(f.code) for f in report.findings if severity is None or str(f.severity) == severity}


def run_cli(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "250"}).invoke(cli, list(args), prog_name="stagewarden")


# -- binomial intervals ------------------------------------------------------------------------


def test_clopper_pearson_known_values() -> None:
    """The exact interval matches published values and the closed forms at k = 0 and k = n."""
    low, high = clopper_pearson(5, 10, 0.95)
    assert low == pytest.approx(0.187086, abs=1e-6) and high == pytest.approx(0.812914, abs=1e-6)
    assert clopper_pearson(0, 10, 0.95) == pytest.approx((0.0, 1 - 0.025**0.1), abs=1e-9)
    assert clopper_pearson(10, 10, 0.95) == pytest.approx((0.025**0.1, 1.0), abs=1e-9)
    low, high = clopper_pearson(1, 1, 0.999)
    assert low == pytest.approx(0.0005, abs=1e-9) and high == 1.0


def test_clopper_pearson_ends_are_binomial_tails() -> None:
    """At each end of the interval the binomial tail equals alpha / 2, for a large n too."""
    k, n, conf = 480, 10_000, 0.999
    low, high = clopper_pearson(k, n, conf)
    assert 1 - binomial_cdf(k - 1, n, low) == pytest.approx(0.0005, rel=1e-6)
    assert binomial_cdf(k, n, high) == pytest.approx(0.0005, rel=1e-6)
    assert low < k / n < high


def test_wilson_known_values() -> None:
    """The Wilson interval of 5 of 10 at 95% is about [0.2366, 0.7634]."""
    assert wilson(5, 10, 0.95) == pytest.approx((0.236593, 0.763407), abs=1e-6)


def test_binomial_cdf_and_beta_match_exact_sums() -> None:
    """The incomplete beta behind the intervals agrees with exact binomial sums."""
    for n, p in ((10, 0.5), (37, 0.05), (200, 0.3)):
        for k in (0, 1, n // 3, n - 1):
            exact = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))
            assert binomial_cdf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-15)
    assert regularized_beta(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-12)


def test_intervals_reject_bad_input() -> None:
    """Counts out of range and confidences outside (0, 1) are errors."""
    for args in ((11, 10, 0.9), (1, 0, 0.9), (1, 10, 1.0)):
        with pytest.raises(ValueError):
            clopper_pearson(*args)


# -- the spec-to-run mapping ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "capability"),
    [
        ({"kind": "weights"}, "tamper_weights"),
        ({"kind": "optimizer"}, "tamper_weights"),  # the update drifts: the spec's weight tampering
        ({"kind": "grad_drift"}, "tamper_weights"),  # the stage's own gradients: its update drifts
        ({"kind": "swap_weights"}, "tamper_weights"),  # weights changed between steps
        ({"kind": "reverse", "direction": "backward"}, "tamper_gradients"),
        ({"kind": "noise"}, "tamper_activations"),
        ({"kind": "equivocate"}, "equivocate"),
    ],
)
def test_attack_capability_names_the_spec_capability(attack: dict[str, Any], capability: str) -> None:
    """A run's attack is checked against the spec capability it exercises."""
    from stagewarden.guarantee_observation import attack_capability

    assert attack_capability(attack) == capability


def test_spec_settings_agree_with_train() -> None:
    """The settings conformance expects are those 'stagewarden train --spec' derives, for every one-replica example."""
    from stagewarden.cli.spec_settings import load_spec_settings

    examples = sorted((Path(__file__).parents[1] / "stagewarden" / "spec" / "examples").glob("*.yaml"))
    checked = 0
    for path in examples:
        loaded = load_spec(path)
        if loaded.spec.topology.replicas == 1:
            assert spec_settings(loaded) == load_spec_settings(str(path), None), path.name
            checked += 1
    assert checked >= 5


# -- conformance of real and edited runs ----------------------------------------------------------


def test_matching_run_conforms(run: Path, tmp_path: Path) -> None:
    """The run made with the spec's settings conforms: exit 0, every promised guarantee consistent."""
    spec = write_spec(tmp_path / "spec.yaml")
    result = run_cli("audit", str(run), "--spec", str(spec))
    assert result.exit_code == EXIT_OK, result.output
    assert "conforms" in result.stdout
    data = json.loads(run_cli("audit", str(run), "--spec", str(spec), "--format", "json").stdout)
    assert data["clean"] is True and data["conformance"]["clean"] is True
    outcomes = {g["id"]: g["outcome"] for g in data["conformance"]["guarantees"]}
    assert outcomes == {
        "no-framing": "consistent",
        "integrity": "consistent",
        "damage": "consistent",
        "liveness": "not promised",
        "cheap": "not checkable",
    }
    rate = data["conformance"]["rate"]
    assert rate["sampled"] == rate["eligible"] == 30 and rate["source"] == "events.jsonl"


@pytest.mark.parametrize(
    ("overrides", "code", "severity"),
    [
        ({"stages": 3}, "SPEC_STAGES", "error"),
        ({"response": "eject"}, "SPEC_RESPONSE", "error"),
        ({"rate": 0.5}, "SPEC_RATE", "error"),
        ({"standby": 1}, "SPEC_STANDBY", "error"),
        ({"extra_check": "\n    - scheme: redundant_neighbour"}, "SPEC_CHECK", "error"),
    ],
    ids=["stages", "response", "rate", "standby", "unsupported-check"],
)
def test_configuration_departures_are_flagged(
    run: Path, tmp_path: Path, overrides: dict[str, Any], code: str, severity: str
) -> None:
    """A spec whose settings differ from the run's gives the finding of that setting, naming the spec line."""
    spec = write_spec(tmp_path / "spec.yaml", **overrides)
    report = conformance(run, spec)
    assert code in codes(report, severity), report.findings
    finding = next(f for f in report.findings if str(f.code) == code)
    assert finding.spec is not None and finding.spec.startswith(f"{spec}:")


def test_run_without_attestation_is_flagged(run: Path, tmp_path: Path) -> None:
    """A run configured without attestation, one of whose workers has no results, departs from a spec
    that requires it."""
    edit_summary(run, lambda d: d["config"].update(attestation=False))
    (run / "attestation" / "s1r0.ear").unlink()
    report = conformance(run, write_spec(tmp_path / "spec.yaml"))
    assert {"SPEC_ATTESTATION", "WORKER_UNATTESTED"} <= codes(report, "error")
    unattested = next(f for f in report.findings if str(f.code) == "WORKER_UNATTESTED")
    assert unattested.workers == ("s1r0",)


def test_observed_rate_off_is_flagged(run: Path, tmp_path: Path) -> None:
    """Without events, a summary that counts 12 sampled units of 30 puts the spec's rate 1 outside
    the 99.9% interval."""
    (run / "events.jsonl").unlink()
    edit_summary(run, lambda d: d["spot_check"].update(units_sampled=12))
    report = conformance(run, write_spec(tmp_path / "spec.yaml"))
    assert report.rate is not None and (report.rate.sampled, report.rate.eligible) == (12, 30)
    assert report.rate.source.startswith("summary.json")
    assert "RATE_OBSERVED" in codes(report, "error")


def test_observed_rate_near_spec_passes_from_summary(run: Path, tmp_path: Path) -> None:
    """The same summary-only path accepts a count consistent with the spec's rate (15 of 30 at p = 0.5)."""
    (run / "events.jsonl").unlink()
    edit_summary(
        run, lambda d: d["spot_check"].update(units_sampled=15, rate=0.5) or d["config"].update(spot_check_rate=0.5)
    )
    report = conformance(run, write_spec(tmp_path / "spec.yaml", rate=0.5))
    assert "RATE_OBSERVED" not in codes(report) and report.rate is not None and report.rate.consistent


def test_edited_sample_is_flagged(run: Path, tmp_path: Path) -> None:
    """A reveal whose logged sample leaves out a unit the secret draws is a mismatch, and the counts disagree."""
    items = events(run)
    reveal = next(e for e in items if e["event"] == "spot_check_reveal")
    reveal["sampled"] = reveal["sampled"][1:]
    write_events(run, items)
    report = conformance(run, write_spec(tmp_path / "spec.yaml"))
    assert {"SAMPLE_MISMATCH", "SAMPLE_COUNTS"} <= codes(report, "error")


def _detection(step: int, stage: int, attempt: int = 0) -> dict[str, Any]:
    return {
        "event": "detection",
        "attempt": attempt,
        "step": step,
        "microbatch": 0,
        "unit_kind": "forward",
        "worker": f"s{stage}r0",
        "stage": stage,
        "check": "spot_check",
        "evidence_digest": "00" * 32,
    }


def _insert_before_step(items: list[dict[str, Any]], step: int, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    i = next(i for i, e in enumerate(items) if e["event"] == "step" and e["step"] == step)
    return items[:i] + new + items[i:]


def test_unanswered_detection_of_an_honest_stage(run: Path, tmp_path: Path) -> None:
    """A detection with no response is unanswered; blaming a stage the run's (absent) attack makes
    malicious breaks no_framing, which the prover says holds."""
    write_events(run, _insert_before_step(events(run), 1, [_detection(1, 1)]))
    report = conformance(run, write_spec(tmp_path / "spec.yaml"))
    assert {"DETECTION_UNANSWERED", "GUARANTEE_BROKEN"} <= codes(report, "error")
    broken = {f.guarantee for f in report.findings if str(f.code) == "GUARANTEE_BROKEN"}
    assert broken == {"no-framing"}


def test_response_outside_the_spec(run: Path, tmp_path: Path) -> None:
    """A detection answered with a response the spec does not list is a response departure."""
    response = {
        "event": "response",
        "step": 1,
        "attempt": 0,
        "plan": {"response": "skip_stage", "stage": 1, "convict": "s1r0", "redo_from_step": 1, "bypass_stage": None},
        "detection": _detection(1, 1),
    }
    write_events(run, _insert_before_step(events(run), 1, [_detection(1, 1), response]))
    report = conformance(run, write_spec(tmp_path / "spec.yaml"))
    assert "RESPONSE_DEPARTURE" in codes(report, "error")
    assert "DETECTION_UNANSWERED" not in codes(report)


def test_recorded_attack_that_went_undetected_breaks_guarantees(run: Path, tmp_path: Path) -> None:
    """If the run records that stage 0 reversed every activation and nothing was detected, the six
    tampered units in the model break bounded_damage (K = 2) and detection (P = 1)."""
    attack = {"kind": "reverse", "stages": [0], "rate": 1.0, "start": 0, "direction": "forward"}
    edit_summary(run, lambda d: d["config"].update(attack=attack))
    report = conformance(run, write_spec(tmp_path / "spec.yaml"))
    broken = {g.id: g.detail for g in report.guarantees if g.outcome == "broken"}
    assert set(broken) == {"damage", "integrity"}
    assert broken["damage"].startswith("6 tampered unit(s)") and "0 of 6" in broken["integrity"]


def test_attack_outside_the_threat_model_is_not_checkable(run: Path, tmp_path: Path) -> None:
    """A recorded attack with a capability the spec's adversary lacks cannot confirm or break its guarantees."""
    attack = {"kind": "weights", "stages": [1], "rate": 1.0, "start": 0}
    edit_summary(run, lambda d: d["config"].update(attack=attack))
    report = conformance(run, write_spec(tmp_path / "spec.yaml"))
    outcomes = {g.id: g.outcome for g in report.guarantees}
    assert outcomes["damage"] == outcomes["integrity"] == "not checkable"
    assert "GUARANTEE_BROKEN" not in codes(report)


def test_stopped_run_breaks_liveness(run: Path, tmp_path: Path) -> None:
    """A run that stopped training breaks a liveness guarantee the prover says holds."""
    edit_summary(run, lambda d: d.update(status="stopped"))
    write_events(run, events(run) + [{"event": "run_stopped", "reason": "step 2 was tampered with"}])
    spec = load_text(
        write_spec(tmp_path / "spec.yaml", response="restart").read_text().replace("rate: 1.0", "rate: 0.999999"),
        str(tmp_path / "spec.yaml"),
    )
    from stagewarden.attest.audit import audit_run_dir

    report = check_conformance(run, spec, audit_run_dir(run))
    liveness = next(g for g in report.guarantees if g.id == "liveness")
    assert liveness.verdict == "holds" and liveness.outcome == "broken" and "tampered" in liveness.detail


# -- the command line -----------------------------------------------------------------------------


def test_cli_json_merges_conformance_findings(run: Path, tmp_path: Path) -> None:
    """With --format json the conformance findings join the audit's findings and counts, and exit 1."""
    spec = write_spec(tmp_path / "spec.yaml", stages=3)
    result = run_cli("audit", str(run), "--spec", str(spec), "--format", "json")
    assert result.exit_code == EXIT_VIOLATED, result.output
    data = json.loads(result.stdout)
    assert data["clean"] is False and data["counts"]["errors"] >= 1
    assert any(f["code"] == "SPEC_STAGES" and f["spec"] for f in data["findings"])


def test_cli_text_names_the_departure(run: Path, tmp_path: Path) -> None:
    """The text report shows the conformance table and exits 1 on an error finding."""
    result = run_cli("audit", str(run), "--spec", str(write_spec(tmp_path / "spec.yaml", response="eject")))
    assert result.exit_code == EXIT_VIOLATED
    assert "SPEC_RESPONSE" in result.stdout and "guarantees against the run" in result.stdout


def test_cli_bad_spec_names_file_line_column(run: Path, tmp_path: Path) -> None:
    """A spec that does not load exits 2 with a file:line:column error, as verify does."""
    spec = write_spec(tmp_path / "spec.yaml")
    spec.write_text(spec.read_text().replace("  microbatches: 2", "  microbatchez: 2"))
    result = run_cli("audit", str(run), "--spec", str(spec))
    assert result.exit_code == EXIT_BAD_INPUT
    assert f"{spec}:5:3" in result.stderr and "Traceback" not in result.output


def test_cli_unreadable_configuration_exits_2(run: Path, tmp_path: Path) -> None:
    """A summary whose run configuration is malformed cannot be compared: exit 2, no traceback."""
    edit_summary(run, lambda d: d["config"].update(stages="two"))
    result = run_cli("audit", str(run), "--spec", str(write_spec(tmp_path / "spec.yaml")))
    assert result.exit_code == EXIT_BAD_INPUT and "error:" in result.stderr and "Traceback" not in result.output
