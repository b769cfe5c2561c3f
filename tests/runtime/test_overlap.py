"""Spot checks and checkpoints that overlap the next step: the pushed units, the packed transfer,
the reused stage modules, and a check that fails while the next step computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_helpers import TINY, fires_once, reference, tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.tensor_digest import digest_state_dict, digest_tensor, weights_digest
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.config import ConfigError, RunConfig
from stagewarden.runtime.launch import launch_local
from stagewarden.runtime.model import build_stage
from stagewarden.runtime.spotcheck import (
    SpotCheckError,
    StagePool,
    export_optimizer_state,
    reexecute_backward,
    reexecute_forward,
    reexecute_update,
)
from stagewarden.runtime.transport import pack_tensors, packed_size, unpack_tensors
from stagewarden.runtime.units import (
    TrainConfig,
    deterministic,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
)


def _events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_packed_tensors_round_trip_and_size_is_checked() -> None:
    """Tensors of several dtypes and shapes (empty and scalar ones too) come back bit for bit from
    one packed buffer, and a buffer of the wrong size is refused."""
    tensors = [torch.randn(3, 4), torch.arange(5), torch.tensor(2.5), torch.empty(2, 0), torch.randn(7).half()]
    layout = [(t.dtype, tuple(t.shape)) for t in tensors]
    packed = pack_tensors(tensors)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(layout) == 48 + 40 + 4 + 0 + 14
    back = unpack_tensors(packed, layout)
    assert [digest_tensor(t) for t in back] == [digest_tensor(t) for t in tensors]
    with pytest.raises(ValueError, match="does not hold"):
        unpack_tensors(packed[:-1], layout)
    assert pack_tensors([]).numel() == 0


def test_weights_digest_from_tensor_digests_is_the_state_dict_digest() -> None:
    """The weights digest computed from per-tensor digests equals digest_state_dict."""
    state = build_stage(TINY, 2, 0, 0).state_dict()
    assert weights_digest({k: digest_tensor(v) for k, v in state.items()}) == digest_state_dict(state)


def test_stage_pool_reexecutes_bit_for_bit_like_a_fresh_stage() -> None:
    """Re-executing forward, backward and update units on a reused module gives bitwise the
    results of a freshly built stage, whatever ran on the module before (gradients included)."""
    pool = StagePool(TINY, 2)
    train = TrainConfig()
    with deterministic(1):
        for stage in (0, 1):
            module = build_stage(TINY, 2, stage, seed=3)
            weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
            x = torch.randint(0, 256, (4, 16)) if stage == 0 else torch.randn(4, 16, TINY.n_embd)
            y = torch.randint(0, 256, (4, 16))
            grad = None if stage == 1 else torch.randn(4, 16, TINY.n_embd)
            targets = y if stage == 1 else None
            for _ in range(2):  # the second round runs on a module the first one used
                fresh = reexecute_forward(TINY, 2, stage, weights, x, targets, microbatches=2)
                pooled = reexecute_forward(TINY, 2, stage, weights, x, targets, microbatches=2, pool=pool)
                assert digest_tensor(fresh) == digest_tensor(pooled)
                a = reexecute_backward(TINY, 2, stage, weights, x, grad, targets, microbatches=2)
                b = reexecute_backward(TINY, 2, stage, weights, x, grad, targets, microbatches=2, pool=pool)
                assert a.param_grads_digest == b.param_grads_digest
                assert (a.grad_input is None) == (b.grad_input is None)
                if a.grad_input is not None and b.grad_input is not None:
                    assert digest_tensor(a.grad_input) == digest_tensor(b.grad_input)
            # an update from the state after one real step
            optimizer = make_optimizer(module, train)
            state = stage_forward(module, x, 2, targets=targets)
            stage_backward(state, grad)
            grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
            optimizer_step(optimizer)
            module.zero_grad(set_to_none=True)
            after = {k: v.detach().clone() for k, v in module.state_dict().items()}
            opt_state = export_optimizer_state(module, optimizer)
            u1 = reexecute_update(TINY, 2, stage, after, grads, opt_state, train, 1)
            u2 = reexecute_update(TINY, 2, stage, after, grads, opt_state, train, 1, pool=pool)
            assert u1.weights_digest == u2.weights_digest
    with pytest.raises(SpotCheckError, match="do not fit"):
        pool.load(0, {"nope": torch.zeros(1)})
    other = TINY.__class__(n_layer=2, n_embd=32, block_size=16, n_head=4)
    with pytest.raises(SpotCheckError, match="another model"):
        reexecute_forward(other, 2, 0, weights, x, pool=pool)


def test_overlap_checks_must_be_a_boolean() -> None:
    """overlap_checks is true or false; anything else is a configuration error."""
    assert RunConfig().overlap_checks is True
    with pytest.raises(ConfigError, match="overlap_checks"):
        RunConfig(overlap_checks="yes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_overlapped_and_settled_runs_are_identical(tmp_path: Path) -> None:
    """An honest spot-checked run gives the same losses, weights and checkpoints whether each
    step's checks and checkpoint overlap the next step or settle before it, and the reference's."""
    summaries, checkpoints = [], []
    for overlap in (True, False):
        config = tiny_config(
            stages=3, steps=3, schedule="1f1b", verification="spot_check", spot_check_rate=1.0, overlap_checks=overlap
        )
        result = launch_local(config, tmp_path / f"run-{overlap}")
        s = result.summary
        assert s["status"] == "completed" and s["detections"] == []
        assert s["spot_check"]["units_checked"] == s["spot_check"]["units_sampled"] > 0
        summaries.append(s)
        checkpoints.append([(e["step"], e["weights"]) for e in _events(result.run_dir) if e["event"] == "checkpoint"])
        assert audit_run_dir(result.run_dir).errors == ()
    losses, weights = reference(tiny_config(stages=3, steps=3, schedule="1f1b"))
    for s in summaries:
        assert s["losses"] == losses and s["final_weights"]["stages"] == weights
    assert checkpoints[0] == checkpoints[1] and [t for t, _ in checkpoints[0]] == [0, 1, 2]


@pytest.mark.slow
def test_a_check_failing_while_the_next_step_computes_discards_that_step(tmp_path: Path) -> None:
    """A tampered step's check fails while the next step computes: that step is discarded (none of
    its receipts is logged), the detection names the tampered step, and the standby takes the
    stage from the checkpoint before it; the run completes as the honest pipeline and audits clean."""
    plan = AttackPlan.from_cli("reverse", "1", 1.0, 1).to_json()
    config = tiny_config(
        stages=3,
        microbatches=1,
        steps=3,
        standby=1,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        response="eject",
    )
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["status"] == "completed" and s["steps_completed"] == 3
    assert [(d["worker"], d["step"]) for d in s["detections"]] == [("s1r0", 1)]
    events = _events(result.run_dir)
    [discarded] = [e for e in events if e["event"] == "step_discarded"]
    assert discarded["step"] == 2
    [detection] = [e for e in events if e["event"] == "detection"]
    assert detection["found_during_step"] == 2 and detection["step"] == 1 and detection["attempt"] == 0
    # no checkpoint holds the tampered step: the standby starts from the checkpoint of step 1
    assert [r["plan"]["checkpoint_step"] for r in s["responses"]] == [1]
    losses, weights = reference(tiny_config(stages=3, microbatches=1, steps=3))
    assert s["losses"] == losses and s["final_weights"]["stages"] == weights
    report = audit_run_dir(result.run_dir)
    assert report.clean, [f.message for f in report.findings]


@pytest.mark.slow
def test_skip_stage_after_a_late_detection_restores_the_tampered_step(tmp_path: Path) -> None:
    """With skip_stage, a detection found while the next step computes takes both steps back: the
    tampered step is recomputed with the stage bypassed and frozen, and training goes on."""
    plan = fires_once(1, 1, quiet_steps=(2,))
    config = tiny_config(
        stages=3,
        microbatches=1,
        steps=3,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        response="skip_stage",
    )
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["status"] == "completed" and s["steps_completed"] == 3
    assert [(d["step"], d["stage"]) for d in s["detections"]] == [(1, 1)]
    assert [(r["plan"]["response"], r["step"]) for r in s["responses"]] == [("skip_stage", 1)]
    assert [e["step"] for e in _events(result.run_dir) if e["event"] == "step_discarded"] == [2]
    assert audit_run_dir(result.run_dir).errors == ()
    assert all(loss == loss and abs(loss) < 100 for loss in s["losses"])


def test_the_cli_flag_turns_overlapping_off(tmp_path: Path) -> None:
    """train --no-overlap-checks writes a configuration that settles every step; without it, steps overlap."""
    from click.testing import CliRunner

    from stagewarden.cli import cli
    from stagewarden.runtime.config import load_run_config
    from stagewarden.runtime.launch import PREPARED_CONFIG

    for flags, expected in (([], True), (["--no-overlap-checks"], False)):
        folder = tmp_path / f"prepared-{expected}"
        args = ["train", "--verification", "spot_check", "--no-attestation", "--out", str(tmp_path / "run")]
        args += ["--prepare", str(folder), *flags]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert load_run_config(folder / PREPARED_CONFIG).overlap_checks is expected


class _ScriptedTransport:
    """Records what the coordinator sends and answers each ``updated`` receive from a script."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int, dict[str, Any]]] = []

    def send_json(self, dst: int, message: dict[str, Any]) -> None:
        self.log.append(("sent", dst, message))

    def recv_json(self, src: int, expect: Any = None) -> dict[str, Any]:
        step = next(m["step"] for kind, dst, m in reversed(self.log) if kind == "sent" and dst == src)
        message = {"type": "updated", "step": step, "weights": "ab" * 32, "busy_ns": 0}
        self.log.append(("received", src, message))
        return message


def test_the_sample_is_drawn_and_named_only_after_every_update_receipt(tmp_path: Path) -> None:
    """The update round: ``update`` names nothing of the sample, the sample is drawn once every
    stage has reported its update (its receipt commits to the update and to the gradient trace,
    both sampled), and the ``push`` messages that name it go out after that. A worker told with
    ``update`` whether its update is sampled could tamper with the others."""
    from stagewarden.runtime.coordinator import Coordinator, StepCommit

    config = tiny_config(stages=3, receipts=False, checkpoint_every=1, response="eject", standby=1)
    transport = _ScriptedTransport()
    coordinator = Coordinator(config, tmp_path / "run", transport, None, heartbeats=None)  # type: ignore[arg-type]
    drawn_at: list[int] = []

    def draw(commit: StepCommit, updates: dict[int, Any]) -> list[tuple[int, int, str]]:
        drawn_at.append(len(transport.log))
        return [(1, 0, "update"), (2, 1, "forward")]

    coordinator.checks.draw_sample = draw  # type: ignore[method-assign]
    commit = StepCommit(0, {}, {}, 1.0, [])
    after = coordinator.update_all(0, frozen=None, commit=commit)
    log = transport.log
    updates = [m for kind, _, m in log if kind == "sent" and m["type"] == "update"]
    assert len(updates) == 3 and all(set(m) == {"type", "step"} for m in updates)
    last_report = max(i for i, (kind, _, _) in enumerate(log) if kind == "received")
    assert drawn_at == [last_report + 1]
    pushes = [(i, dst, m) for i, (kind, dst, m) in enumerate(log) if kind == "sent" and m["type"] == "push"]
    assert all(i > last_report for i, _, _ in pushes)
    # every stage pushes (a checkpoint is due); each is told its own sampled units only
    assert {dst: m["push"] for _, dst, m in pushes} == {1: [], 2: [[0, "update"]], 3: [[1, "forward"]]}
    assert all(m["snapshot"] is True for _, _, m in pushes)
    assert after.pushes == {0: [], 1: [(0, "update")], 2: [(1, "forward")]}
