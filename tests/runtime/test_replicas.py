"""Data-parallel replicas: R pipelines on their own data shards whose workers of a stage exchange
gradient contributions and apply one aggregated update, checked by the coordinator and the audit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_helpers import concatenated_reference, tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.receipt_log import RecordType, scan_log
from stagewarden.attest.receipts import UnitKind, parse_receipt
from stagewarden.attest.rundir import LOG_FILE
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.config import ConfigError
from stagewarden.runtime.launch import launch_local
from stagewarden.runtime.layout import Layout


def _errors(run: Path) -> list[str]:
    return [f"{f.code}: {f.message}" for f in audit_run_dir(run).errors]


def _receipts(run: Path) -> list[Any]:
    return [
        parse_receipt(r.payload)
        for r in scan_log((run / LOG_FILE).read_bytes()).records
        if r.type is RecordType.RECEIPT
    ]


def test_the_layout_numbers_slots_pipeline_after_pipeline() -> None:
    """Slot q is stage q % S of pipeline q // S; pipelines are replica-major, copies inside."""
    layout = Layout(stages=3, replicas=2, copies=2)
    assert (layout.pipelines, layout.slots) == (4, 12)
    assert [layout.stage(q) for q in range(4)] == [0, 1, 2, 0]
    assert [(layout.replica(q), layout.copy(q)) for q in (0, 3, 6, 9)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert layout.copies_of(layout.slot(1, 2)) == [7, 10]
    everyone = set(range(layout.slots))
    assert layout.group(4, everyone) == [4, 7] and layout.group(10, everyone) == [1, 10]
    assert layout.audience(1, everyone) == [7, 10] and layout.audience(4, everyone) == []
    # replica 1's copy 0 (pipeline 2) left the run: replica 1 is its copy 1 for everyone
    left = everyone - set(layout.of_pipeline(2))
    assert [layout.group(q, left) for q in (1, 4, 10)] == [[1, 10], [4, 10], [1, 10]]
    assert layout.audience(10, left) == [1, 4] and layout.audience(1, left) == [10]
    assert layout.worker_id(layout.slot(2, 3)) == "s2r1c1"
    assert Layout(3, 2).worker_id(4) == "s1r1" and Layout(3).worker_id(2) == "s2r0"


def test_a_run_with_replicas_trains_like_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    """Two replicas of a 2-stage pipeline: each reads its own shard, the workers of a stage average
    their gradients, and the losses are those of one process training on both shards' micro-batches
    as one batch (the same sums in another order: equal to float32 rounding). Both pipelines sign
    receipts under their own pipeline index, hold the same weights, and the run audits clean."""
    config = tiny_config(replicas=2, steps=3)
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and summary["detections"] == []
    expected = concatenated_reference(config)
    assert summary["losses"] == pytest.approx(expected, rel=2e-5, abs=2e-5)
    single = concatenated_reference(dataclasses.replace(config, replicas=1))
    assert summary["losses"][1:] != pytest.approx(single[1:], rel=1e-4)  # the second shard counts
    record = json.loads((run / "summary.json").read_text())
    assert record["replicas"] == 2
    assert {(w["id"], w["stage"], w["replica"]) for w in record["workers"]} == {
        ("s0r0", 0, 0),
        ("s1r0", 1, 0),
        ("s0r1", 0, 1),
        ("s1r1", 1, 1),
    }
    receipts = _receipts(run)
    assert {(r.worker_id, r.replica) for r in receipts} == {("s0r0", 0), ("s1r0", 0), ("s0r1", 1), ("s1r1", 1)}
    for stage in (0, 1):  # one aggregated update: the replicas' update receipts commit to the same state
        for step in range(config.steps):
            outputs = {
                r.output_digest for r in receipts if r.kind is UnitKind.UPDATE and (r.stage, r.step) == (stage, step)
            }
            assert len(outputs) == 1
    assert _errors(run) == []


def test_the_median_of_three_replicas_bounds_what_one_drifting_replica_can_do(tmp_path: Path) -> None:
    """A gradient drift on replica 1's stage 0 (a fixed direction added to every accumulated
    gradient) enters the aggregate. Under the mean, how far the model moves follows the drift:
    1e4 and 1e6 give other weights. Under the median of three, a drift that far beyond the honest
    gradients puts the drifting replica outside the honest two at every coordinate, so the
    aggregate is one honest value or the other however far it goes: 1e4 and 1e6 give the same
    weights bit for bit (and other weights than a clean run: the median still lets it choose among
    the honest values). Nothing is detected: robust aggregation masks, it does not attribute."""
    base = tiny_config(replicas=3, steps=2, checkpoint_every=0)

    def drift(amount: float) -> dict[str, Any]:
        return AttackPlan.from_cli("grad_drift", "0", 1.0, 0, drift=amount, pipelines="1").to_json()

    runs = {
        "clean_median": dataclasses.replace(base, aggregation="median"),
        "mean_small": dataclasses.replace(base, attack=drift(1e4)),
        "mean_large": dataclasses.replace(base, attack=drift(1e6)),
        "median_small": dataclasses.replace(base, aggregation="median", attack=drift(1e4)),
        "median_large": dataclasses.replace(base, aggregation="median", attack=drift(1e6)),
    }
    summaries = {name: launch_local(config, tmp_path / name).summary for name, config in runs.items()}
    assert all(s["status"] == "completed" and s["detections"] == [] for s in summaries.values())
    final = {name: s["final_weights"]["stages"][0] for name, s in summaries.items()}
    assert final["median_small"] == final["median_large"] != final["clean_median"]
    assert final["mean_small"] != final["mean_large"]
    for name in runs:
        assert _errors(tmp_path / name) == []


def test_a_replica_whose_update_differs_from_the_others_is_outvoted_and_its_pipeline_retired(
    tmp_path: Path,
) -> None:
    """Replica 1's stage 1 moves its weights after every update (attack ``weights``): its state
    after step 0 differs from the other two replicas', which agree; the coordinator blames it
    (``replica_state``) at step 0, and with no standby its pipeline leaves the run, the others
    restore step 0 and complete; the audit accepts the retirement, and a summary that hides it
    does not audit clean."""
    plan = AttackPlan.from_cli("weights", "1", 1.0, 0, pipelines="1").to_json()
    config = tiny_config(replicas=3, steps=3, attack=plan)
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 3
    assert [(d["worker"], d["step"], d["check"]) for d in summary["detections"]] == [("s1r1", 0, "replica_state")]
    plan_record = summary["responses"][0]["plan"]
    assert (plan_record["response"], plan_record["retired_pipeline"], plan_record["checkpoint_step"]) == ("eject", 1, 0)
    assert summary["false_alarms"] == 0
    assert _errors(run) == []
    # hide the retirement: the retired pipeline's workers now miss receipts and the seal breaks
    record = json.loads((run / "summary.json").read_text())
    del record["responses"][0]["plan"]["retired_pipeline"]
    (run / "summary.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    assert _errors(run)


def test_configurations_that_cannot_run_with_replicas_are_refused() -> None:
    """Each mode that assumes one pipeline, and a rule that needs more replicas, is refused with why."""
    with pytest.raises(ConfigError, match="redundant_neighbour checks one pipeline"):
        tiny_config(replicas=2, verification="redundant_neighbour")
    with pytest.raises(ConfigError, match="skip_stage bypasses a stage of a single pipeline"):
        tiny_config(replicas=2, response="skip_stage")
    with pytest.raises(ConfigError, match="krum needs at least 3 replicas"):
        tiny_config(replicas=2, aggregation="krum")
    with pytest.raises(ConfigError, match="pipelines \\[2\\] do not exist"):
        tiny_config(replicas=2, attack=AttackPlan.from_cli("reverse", "1", pipelines="2").to_json())
    with pytest.raises(ConfigError, match="replicas must be a whole number"):
        tiny_config(replicas=0)


class _Wire:
    """A transport between a worker (rank 1) and its group, whose peers send ``sent``."""

    def __init__(self, sent: dict[int, Any]) -> None:
        self.sent, self.posted = sent, []

    def send_tensor(self, dst: int, tensor: Any, *, blocking: bool = True) -> None:
        self.posted.append((dst, tensor.clone()))

    def recv_tensor(self, src: int, dtype: Any, shape: tuple[int, ...]) -> Any:
        return self.sent[src]

    def flush(self) -> None:
        pass


def test_a_contribution_other_than_the_committed_one_is_refused_and_blamed_on_its_sender() -> None:
    """The group's worker of rank 2 committed one contribution and sends another (a replica's
    equivocation): the receiver refuses it as a malformed message from rank 2, before anything is
    aggregated; the committed one is taken, and the receiver's own goes to every other member."""
    import torch

    from stagewarden.runtime.model import build_stage
    from stagewarden.runtime.transport import TransportError
    from stagewarden.runtime.worker.contributions import exchange, shaped_digest

    module = build_stage(tiny_config().model, 2, 0, 0)
    size = sum(p.numel() for p in module.parameters())
    own, honest = torch.ones(size), torch.full((size,), 2.0)
    committed = (shaped_digest(module, own), shaped_digest(module, honest))
    group = [(1, "s0r0"), (2, "s0r1")]
    wire = _Wire({2: honest})
    got = exchange(module, wire, group, 1, own, committed)  # type: ignore[arg-type]
    assert torch.equal(got[1], honest) and [dst for dst, _ in wire.posted] == [2]
    forged = _Wire({2: honest * 1.5})
    with pytest.raises(TransportError, match="another gradient contribution than the one it committed") as caught:
        exchange(module, forged, group, 1, own, committed)  # type: ignore[arg-type]
    assert caught.value.peer == 2
    with pytest.raises(TransportError, match="names 1 committed contributions for a group of 2"):
        exchange(module, wire, group, 1, own, committed[:1])  # type: ignore[arg-type]


def test_spot_checks_catch_an_attack_on_one_replica_and_its_slot_goes_to_the_standby(tmp_path: Path) -> None:
    """Replica 1's stage 0 reverses its activations; a spot check of every unit catches it at
    step 0, the standby takes its slot in replica 1's pipeline, and the run completes and audits
    clean with the standby named in replica 1."""
    plan = AttackPlan.from_cli("reverse", "0", 1.0, 0, pipelines="1").to_json()
    config = tiny_config(replicas=2, steps=2, verification="spot_check", spot_check_rate=1.0, attack=plan, standby=1)
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 2
    assert {(d["worker"], d["step"]) for d in summary["detections"]} == {("s0r1", 0)}
    assert summary["replacements"] == [{"worker": "s0r1", "by": "standby0", "stage": 0, "from_step": 0, "replica": 1}]
    record = json.loads((run / "summary.json").read_text())
    assert {"id": "standby0", "stage": 0, "replica": 1} in record["workers"]
    assert _errors(run) == []


@pytest.mark.parametrize("edit", ["fewer_replicas", "moved_worker"])
def test_a_replicas_record_rewritten_after_the_run_does_not_audit_clean(tmp_path: Path, edit: str) -> None:
    """Claiming one pipeline fewer, or moving a worker of replica 1 to replica 0, in the sealed
    summary is caught."""
    run = tmp_path / "run"
    launch_local(tiny_config(replicas=2, steps=1), run)
    assert _errors(run) == []
    record = json.loads((run / "summary.json").read_text())
    if edit == "fewer_replicas":
        record["replicas"] = 1
        record["workers"] = [w for w in record["workers"] if w["replica"] == 0]
    else:
        next(w for w in record["workers"] if w["id"] == "s1r1")["replica"] = 0
    (run / "summary.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    assert _errors(run)


@pytest.mark.parametrize("edit", ["commitment", "aggregate", "trace"])
def test_an_aggregate_that_does_not_recompute_from_the_contributions_is_found_offline(
    tmp_path: Path, edit: str
) -> None:
    """The ``updated`` events of a 3-replica run hold each replica's trace; the audit recomputes
    every group's aggregate commitment from the members' contributions. Changing one replica's
    commitment, its applied aggregate, or its trace (which its update receipt no longer matches)
    is an ``AGGREGATE_MISMATCH`` (beside the seal's finding that the events were rewritten)."""
    run = tmp_path / "run"
    launch_local(tiny_config(replicas=3, steps=1), run)
    assert _errors(run) == []
    path = run / "events.jsonl"
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "updated")
    event = json.loads(lines[index])
    entry = event["stages"]["3"]  # stage 1 of replica 1
    mbs = 2
    if edit == "commitment":
        entry["trace"][mbs] = "00" * 32
    elif edit == "aggregate":
        entry["trace"][mbs + 1] = "11" * 32
    else:
        entry["trace"][0] = "22" * 32
    lines[index] = json.dumps(event, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    codes = {f.code for f in audit_run_dir(run).errors}
    assert "AGGREGATE_MISMATCH" in codes and "EVENTS_REWRITTEN" in codes


def _pid(run_dir: Path, stage: int, replica: int) -> int:
    rows = json.loads((run_dir / "workers.json").read_text(encoding="utf-8"))["workers"]
    return next(int(r["pid"]) for r in rows if r["role"] == "stage" and (r["stage"], r["replica"]) == (stage, replica))


def test_a_killed_replica_worker_is_replaced_and_the_resumed_run_matches_the_fault_free_one(tmp_path: Path) -> None:
    """Replica 1's stage 1 is killed after step 1: the run stops resumably, resumes with the
    standby in that slot (the replacement names replica 1), ends with the same weights bit for bit
    as the same run without the fault, and audits clean."""
    import os
    import signal

    fast = {"heartbeat_timeout": 2.0, "silence_timeout": 4.0, "timeout": 60.0}
    config = tiny_config(replicas=2, steps=4, standby=1, **fast)
    clean = launch_local(config, tmp_path / "clean").summary
    run_dir = tmp_path / "run"
    done: list[bool] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event.get("step") == 1 and not done:
            done.append(True)
            os.kill(_pid(run_dir, 1, 1), signal.SIGKILL)

    summary = launch_local(config, run_dir, on_event=on_event).summary
    assert done and summary["status"] == "completed" and summary["steps_completed"] == 4
    [fault] = summary["faults"]
    assert (fault["worker"], fault["stage"], fault["standby"]) == ("s1r1", 1, "standby0")
    [replacement] = summary["replacements"]
    assert (replacement["worker"], replacement["by"], replacement["replica"]) == ("s1r1", "standby0", 1)
    assert summary["final_weights"] == clean["final_weights"]
    assert _errors(run_dir) == []


@pytest.mark.parametrize("response", ["rollback", "restart"])
def test_the_other_responses_work_with_replicas(tmp_path: Path, response: str) -> None:
    """A spot-checked attack on replica 1's stage 0 under rollback (a standby takes the slot) or
    restart (the step is computed again on every pipeline, the attacker stays and is caught again):
    the detections name only the attacker, the run ends and audits clean."""
    plan = AttackPlan.from_cli("reverse", "0", 1.0, 1, pipelines="1").to_json()
    config = tiny_config(
        replicas=2,
        steps=3,
        verification="spot_check",
        spot_check_rate=1.0,
        attack=plan,
        standby=1,
        response=response,
        max_recomputations=3,
    )
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["detections"] and {d["worker"] for d in summary["detections"]} == {"s0r1"}
    assert summary["false_alarms"] == 0
    if response == "rollback":
        assert summary["status"] == "completed" and summary["replacements"][0]["by"] == "standby0"
        assert _errors(run) == []
    else:  # restart never removes the attacker: it tampers in every computation until the run stops
        assert summary["status"] == "stopped" and "no honest path through step 1" in summary["stop_reason"]
        assert _errors(run) == []


@pytest.mark.parametrize("lie", ["none", "contribution", "other_contributions", "other_rule"])
def test_an_update_must_aggregate_what_its_group_committed(lie: str) -> None:
    """Stage 1 of replica 0 (slot 1; its group is slots 1 and 3) with microbatches 2: its trace must
    end with its own accumulated gradients (the contribution it committed and sent), the commitment
    to the run's rule over the group's committed contributions, and the aggregate. A worker that
    sent another contribution than it accumulated, or aggregated other contributions or under
    another rule, is caught when its update receipt arrives."""
    from coordinator_parts import Parts
    from nacl.signing import SigningKey
    from test_check_unit import _receipt

    from stagewarden.attest.receipts import UnitKind, encode_receipt
    from stagewarden.attest.tensor_digest import (
        aggregate_commitment,
        digest_state_dict,
        gradient_trace_digest,
        update_input_digest,
        update_output_digest,
    )
    from stagewarden.runtime.coordinator import StepCommit
    from stagewarden.runtime.protocol import UpdateCommitment

    coordinator = Parts(tiny_config(replicas=2), transport=None, signing_key=SigningKey(bytes(32)))
    own, peer, before = bytes([1]) * 32, bytes([3]) * 32, digest_state_dict({})
    committed = {1: own, 3: peer}
    contributions = {"other_contributions": [own, bytes([4]) * 32]}.get(lie, [own, peer])
    commitment = aggregate_commitment("median" if lie == "other_rule" else "mean", contributions)
    trace = [bytes([9]) * 32, bytes([2]) * 32 if lie == "contribution" else own, commitment, bytes([5]) * 32]
    weights, after = coordinator.ledger.expected_weights(1), digest_state_dict({"w": torch.ones(1)})
    receipt = _receipt(
        UnitKind.UPDATE,
        update_input_digest(gradient_trace_digest(trace), before),
        bytes.fromhex(weights),
        micro_batch=0,
        output_digest=update_output_digest(after, before),
    )
    reported = UpdateCommitment(encode_receipt(receipt), before, before, tuple(trace))
    commit = StepCommit(0, {1: []}, {}, 0.0, [], contributions=committed)
    found = coordinator.checks.accept_update(1, 0, receipt, after, reported, commit)
    expected = {"none": [], "contribution": ["contribution"]}.get(lie, ["aggregate"])
    assert [d.check for d in found] == expected
    assert all((d.worker, d.stage) == ("s1r0", 1) for d in found)


def test_a_replica_that_sends_its_peers_another_contribution_stops_the_run_without_blaming_anyone(
    tmp_path: Path,
) -> None:
    """Replica 1's stage 1 commits its gradients but sends its peer twice them (the
    ``STAGEWARDEN_TEST_FORGE_CONTRIBUTION`` hook). The peer refuses the contribution before
    aggregating anything, so no update applies it. The refusal is the receiver's word against the
    sender's (the tensor it sent is not signed), so the run stops resumably with the fault
    unattributed: no worker, honest or not, is blamed."""
    from stagewarden.runtime.launch import LaunchError
    from stagewarden.runtime.worker.hooks import FORGE_CONTRIBUTION_ENV

    fast = {"heartbeat_timeout": 2.0, "silence_timeout": 4.0, "timeout": 60.0}
    run = tmp_path / "run"
    with pytest.raises(LaunchError, match="sent another gradient contribution than the one it committed") as caught:
        launch_local(tiny_config(replicas=2, steps=2, **fast), run, env={FORGE_CONTRIBUTION_ENV: "1:1"})
    assert caught.value.resumable
    record = json.loads((run / "summary.json").read_text())
    assert record["status"] == "interrupted" and record["detections"] == []
    assert [(f["cause"], f["worker"]) for f in record["faults"]] == [("unattributed", None)]
