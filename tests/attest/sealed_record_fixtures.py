"""Real run directories, and the log holder's tools, for the sealed-record tests.

Each :class:`Trained` run is made by ``launch_local`` with attestation, receipts and spot checks,
once per test process whatever the modules that use it (:func:`trained_run`, behind the module
fixtures ``honest``, ``attacked`` and ``replaced`` that a test module imports); a test tampers
with a copy (:func:`copy_run`). The tools below are what a holder of the directory has: it can
re-frame the receipt log (:func:`write_records`, written here from the frame layout, not with the
log's own writer), rewrite ``events.jsonl`` and ``summary.json``, and, where a test says so,
re-sign step heads with the coordinator's private key.

The coordinator deletes ``RUN_DIR.keys`` (its private key) when a run completes, and it runs in a
process of its own, so patching ``shutil.rmtree`` in the test process would not keep it. Instead
the launching process copies ``RUN_DIR.keys/coordinator.key`` from its ``on_event`` callback while
the run is going: what a holder who read the folder before the run ended would know.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import blake3
import pytest
from nacl.signing import SigningKey

from stagewarden.attest.audit import AuditReport, audit_run_dir
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.headers import SignedHeader, parse_header
from stagewarden.attest.receipt_log import LOG_GENESIS, RecordType, scan_log
from stagewarden.attest.receipts import Receipt, parse_receipt
from stagewarden.attest.step_heads import EventsChain, SignedStepHead, StepHead, cosign, sign_head
from stagewarden.attest.vendor import init_vendor
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.config import RunConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from distributed_helpers import tiny_config  # noqa: E402

LOG = "receipts.log"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
#: The receipt log's 16-byte file header (magic, version 1, six zero bytes).
LOG_HEADER = b"SWRLOG\r\n" + struct.pack(">H", 1) + bytes(6)

Record = tuple[RecordType, bytes]


@dataclasses.dataclass(frozen=True)
class Trained:
    """A finished run and what the test knows about it.

    Attributes:
        run: The run directory (never modified: tests tamper with copies).
        verifier_key: The verifier's public key, as an auditor pins it.
        coordinator_key: The coordinator's public key, as an auditor pins it.
        signing_key: The coordinator's private key, copied while the run was going.
        malicious: The workers the attack plan makes malicious.
        verifier_dir: The attestation verifier's own key folder (outside the run's folders).
    """

    run: Path
    verifier_key: bytes
    coordinator_key: bytes
    signing_key: SigningKey
    malicious: frozenset[str]
    verifier_dir: Path | None = None


def train(base: Path, config: RunConfig, malicious: frozenset[str]) -> Trained:
    """Run ``config`` in ``base/run`` with a vendor folder of its own, keeping the coordinator key."""
    vendor = base / "vendor"
    init_vendor(vendor)
    run = base / "run"
    kept = base / "coordinator.key"

    def keep_key(event: dict[str, Any]) -> None:
        source = base / "run.keys" / "coordinator.key"
        if not kept.exists() and source.exists():
            shutil.copyfile(source, kept)

    from stagewarden.runtime.launch import launch_local

    verifier_dir = base / "verifier"
    result = launch_local(config, run, vendor_dir=vendor, on_event=keep_key, verifier_dir=verifier_dir)
    assert result.summary["status"] == "completed", result.summary.get("stop_reason")
    assert not (base / "run.keys").exists(), "a completed run keeps no private key"
    signing_key = SigningKey(bytes.fromhex(kept.read_text().strip()))
    coordinator_key = bytes.fromhex((run / "coordinator.pub").read_text().strip())
    assert bytes(signing_key.verify_key) == coordinator_key
    verifier_key = bytes.fromhex((run / "attestation" / "verifier.pub").read_text().strip())
    return Trained(run, verifier_key, coordinator_key, signing_key, malicious, verifier_dir)


def honest_config() -> RunConfig:
    """3 stages and a standby, 4 steps, spot checks at p=0.5, no attack."""
    config: RunConfig = tiny_config(stages=3, standby=1, steps=4, verification="spot_check", spot_check_rate=0.5)
    return config


def restart_plan(stage: int, steps: int) -> AttackPlan:
    """A per-step ``reverse`` plan on ``stage`` at rate 0.5 whose draws fire on at least two steps,
    at least three times in all, and never more than twice in a row (so ``restart`` with up to 4
    recomputations completes the run)."""

    def plan(seed: int) -> AttackPlan:
        return AttackPlan.from_cli("reverse", str(stage), 0.5, seed=seed, per="step")

    def firings(p: AttackPlan, step: int) -> int:
        return next(a for a in range(100) if not p.active(stage, step, 0, a))

    for seed in range(1000):
        fired = [firings(plan(seed), t) for t in range(steps)]
        if sum(fired) >= 3 and max(fired) <= 2 and sum(1 for f in fired if f) >= 2:
            return plan(seed)
    raise AssertionError("no plan fits")


def attacked_config() -> RunConfig:
    """Stage 1 tampers with its activations on several steps; spot checks at p=1 catch it each
    time and ``restart`` recomputes the step."""
    plan = restart_plan(1, 4)
    config: RunConfig = tiny_config(
        stages=3,
        steps=4,
        attack=plan.to_json(),
        verification="spot_check",
        spot_check_rate=1.0,
        response="restart",
        max_recomputations=4,
    )
    return config


def replaced_config() -> RunConfig:
    """Stage 1 tampers from step 1, is caught and ejected, and the standby takes its stage."""
    plan = AttackPlan.from_cli("reverse", "1", 1.0, 1)
    config: RunConfig = tiny_config(
        stages=3, standby=1, steps=4, attack=plan.to_json(), verification="spot_check", spot_check_rate=1.0
    )
    return config


RUNS: dict[str, tuple[Callable[[], RunConfig], frozenset[str]]] = {
    "honest": (honest_config, frozenset()),
    "attacked": (attacked_config, frozenset({"s1r0"})),
    "replaced": (replaced_config, frozenset({"s1r0"})),
}
_TRAINED: dict[str, Trained] = {}


def trained_run(name: str, factory: pytest.TempPathFactory) -> Trained:
    """The run ``name`` of :data:`RUNS`, trained in a folder of ``factory`` (pytest's
    ``tmp_path_factory``) at its first use in this process (tests only read it: they tamper with
    copies)."""
    if name not in _TRAINED:
        config, malicious = RUNS[name]
        trained = train(factory.mktemp(name), config(), malicious)
        summary = read_summary(trained.run)
        if name == "attacked":
            assert len(summary["detections"]) >= 3
            assert {d["worker"] for d in summary["detections"]} == {"s1r0"}
        if name == "replaced":
            [replacement] = summary["replacements"]
            assert (replacement["worker"], replacement["by"]) == ("s1r0", "standby0")
        _TRAINED[name] = trained
    return _TRAINED[name]


@pytest.fixture(scope="module", name="honest")
def honest_run(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The honest run (fixture ``honest``)."""
    return trained_run("honest", tmp_path_factory)


@pytest.fixture(scope="module", name="attacked")
def attacked_run(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The run where stage 1 is caught on several steps (fixture ``attacked``)."""
    return trained_run("attacked", tmp_path_factory)


@pytest.fixture(scope="module", name="replaced")
def replaced_run(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The run where the standby replaces stage 1 (fixture ``replaced``)."""
    return trained_run("replaced", tmp_path_factory)


def copy_run(trained: Trained, tmp_path: Path) -> Path:
    """A copy of the run directory for one test to tamper with."""
    return Path(shutil.copytree(trained.run, tmp_path / "run"))


def witnesses(run: Path) -> list[Path]:
    """Every witness file the run's workers kept."""
    found = sorted((run / "witness").glob("*.jsonl"))
    assert found, f"no witness file in {run}"
    return found


def audit(trained: Trained, run: Path, witness: Sequence[Path] = ()) -> AuditReport:
    """The audit of ``run`` with the verifier and coordinator keys pinned."""
    return audit_run_dir(
        run, trained.verifier_key, coordinator_key=trained.coordinator_key, witnesses=[str(w) for w in witness]
    )


def assert_caught(report: AuditReport, code: ErrorCode, malicious: frozenset[str]) -> None:
    """The audit is not clean, names ``code`` as an error, and blames no honest worker."""
    findings = [(f.code, f.workers) for f in report.errors]
    assert not report.clean, "the tampered record audits clean"
    assert code in {f.code for f in report.errors}, f"{code} not among {findings}"
    blamed = [f for f in report.errors if not set(f.workers) <= malicious]
    assert not blamed, f"honest workers blamed: {[(f.code, f.workers, f.message) for f in blamed]}"


def caught(trained: Trained, run: Path, code: ErrorCode, witness: bool = False) -> None:
    """:func:`assert_caught` of the audit of ``run``, with every witness file of ``run`` if ``witness``."""
    assert_caught(audit(trained, run, witnesses(run) if witness else ()), code, trained.malicious)


# -- the receipt log ------------------------------------------------------------------------------


def frame(record_type: RecordType, payload: bytes, prev: bytes) -> bytes:
    """``u32 len | u8 type | 32-byte previous digest | payload | 32-byte BLAKE3 of what precedes``."""
    head = struct.pack(">IB", len(payload), int(record_type)) + prev + payload
    return head + blake3.blake3(head).digest()


def frame_digests(records: Sequence[Record]) -> list[bytes]:
    """Each record's frame digest when ``records`` are framed in this order."""
    digests, prev = [], LOG_GENESIS
    for record_type, payload in records:
        prev = frame(record_type, payload, prev)[-32:]
        digests.append(prev)
    return digests


def read_records(run: Path) -> list[Record]:
    """The log's records, in order."""
    scan = scan_log((run / LOG).read_bytes())
    assert not scan.problems
    return [(r.type, r.payload) for r in scan.records]


def write_records(run: Path, records: Sequence[Record]) -> None:
    """Replace the log with ``records`` framed anew, so that its own hash chain is intact."""
    out, prev = [LOG_HEADER], LOG_GENESIS
    for record_type, payload in records:
        framed = frame(record_type, payload, prev)
        out.append(framed)
        prev = framed[-32:]
    (run / LOG).write_bytes(b"".join(out))


def without(records: Sequence[Record], drop: Callable[[Record], bool]) -> list[Record]:
    """``records`` less those ``drop`` picks."""
    return [r for r in records if not drop(r)]


def of_type(record_type: RecordType) -> Callable[[Record], bool]:
    return lambda r: r[0] is record_type


def _signed(record: Record) -> Receipt | SignedHeader | None:
    record_type, payload = record
    if record_type is RecordType.RECEIPT:
        return parse_receipt(payload)
    if record_type is RecordType.HEADER:
        return parse_header(payload)
    return None


def author(record: Record) -> str | None:
    """The worker that signed a receipt or header (``None`` for the seal's records)."""
    signed = _signed(record)
    return signed.worker_id if isinstance(signed, Receipt) else signed.sender if signed else None


def step_of(record: Record) -> int | None:
    """The training step of a receipt or header (``None`` for the seal's records)."""
    signed = _signed(record)
    return signed.step if signed else None


def head_positions(records: Sequence[Record]) -> list[int]:
    """Indices of the step heads."""
    return [i for i, (t, _) in enumerate(records) if t is RecordType.STEP_HEAD]


def head_at(records: Sequence[Record], index: int) -> StepHead:
    """The step head of record ``index``."""
    record_type, payload = records[index]
    assert record_type is RecordType.STEP_HEAD
    return SignedStepHead.parse(payload).head


# -- events and summary ---------------------------------------------------------------------------


def read_events(run: Path) -> list[bytes]:
    """The lines of ``events.jsonl`` without their newlines."""
    data = (run / EVENTS).read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def write_events(run: Path, lines: Sequence[bytes]) -> None:
    (run / EVENTS).write_bytes(b"".join(line + b"\n" for line in lines))


def event(line: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(line)
    return value


def read_summary(run: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((run / SUMMARY).read_bytes())
    return value


def write_summary(run: Path, summary: dict[str, Any]) -> bytes:
    """Write ``summary`` as the runtime lays it out; return the bytes written."""
    data = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8")
    (run / SUMMARY).write_bytes(data)
    return data


def hide_detections(run: Path) -> tuple[list[bytes], Callable[[StepHead], int], dict[str, Any]]:
    """Delete every detection and response event of ``run``; return the event lines kept, how many
    of them a head that covered ``h.events`` of the old lines now covers, and the summary with its
    detections and responses emptied (not written: the caller may change more of it)."""
    lines = read_events(run)
    gone = [i for i, line in enumerate(lines) if event(line)["event"] in ("detection", "response")]
    kept = [line for i, line in enumerate(lines) if i not in gone]
    write_events(run, kept)
    summary = read_summary(run)
    summary["detections"], summary["responses"] = [], []
    return kept, lambda h: h.events - sum(i < h.events for i in gone), summary


# -- a holder with the coordinator's key ----------------------------------------------------------


def reseal(
    records: Sequence[Record],
    events: Sequence[bytes],
    summary: bytes,
    key: SigningKey,
    events_at: Callable[[StepHead], int],
) -> list[Record]:
    """``records`` with every step head re-signed with ``key`` over the log as it now stands:
    heads numbered anew from 0, each committing to the records before it, to the first
    ``events_at(old head)`` lines of ``events``, and the final one to ``summary``. Cosignatures
    are kept as they are (they name the old final head)."""
    out: list[Record] = []
    sequence = 0
    for record_type, payload in records:
        if record_type is RecordType.STEP_HEAD:
            old = SignedStepHead.parse(payload).head
            count = events_at(old)
            chain = EventsChain()
            for line in events[:count]:
                chain.add(line)
            new = old.model_copy(
                update={
                    "sequence": sequence,
                    "records": len(out),
                    "log_digest": (frame_digests(out)[-1] if out else LOG_GENESIS).hex(),
                    "events": count,
                    "events_digest": chain.digest.hex(),
                    "summary_digest": blake3.blake3(summary).hexdigest() if old.final else None,
                }
            )
            payload = sign_head(new, key).encode()
            sequence += 1
        out.append((record_type, payload))
    return out


def ghost_holders(summary: dict[str, Any], steps: int) -> list[str]:
    """Make ``summary`` say that workers of no receipts (``ghostS``) replaced every stage's holder
    after ``steps`` steps, so that they are the workers whose cosignatures the final head needs;
    return their ids."""
    ghosts = [f"ghost{s}" for s in range(summary["stages"])]
    summary["workers"] += [{"id": g, "replica": 0, "stage": s} for s, g in enumerate(ghosts)]
    summary["replacements"] = [
        {"worker": w["id"], "by": ghosts[w["stage"]], "stage": w["stage"], "from_step": steps}
        for w in summary["workers"][: -len(ghosts)]
    ]
    return ghosts


def forge_truncated_seal(trained: Trained, run: Path, cosigners: Literal["none", "genuine", "ghosts"]) -> StepHead:
    """Cut the log after the head of the step before the last, drop the events and the step after
    it, and seal the cut record anew with the coordinator's key: a final head following the kept
    heads and signing the lowered summary. Then log no cosignature, the genuine ones (of the
    genuine final head), or cosignatures by keys of the holder's own in the names of ghost stage
    holders (:func:`ghost_holders`). Return the forged final head."""
    records = read_records(run)
    keep = head_positions(records)[-3]
    kept = head_at(records, keep)
    genuine = [r for r in records if r[0] is RecordType.COSIGNATURE]
    records = records[: keep + 1]
    write_events(run, read_events(run)[: kept.events])
    summary = read_summary(run)
    summary["steps"] = summary["steps_completed"] = kept.steps
    summary["losses"] = summary["losses"][: kept.steps]
    ghosts = ghost_holders(summary, kept.steps) if cosigners == "ghosts" else []
    data = write_summary(run, summary)
    forged = kept.model_copy(
        update={
            "sequence": kept.sequence + 1,
            "records": len(records),
            "log_digest": frame_digests(records)[-1].hex(),
            "final": True,
            "status": "completed",
            "summary_digest": blake3.blake3(data).hexdigest(),
        }
    )
    records.append((RecordType.STEP_HEAD, sign_head(forged, trained.signing_key).encode()))
    if cosigners == "genuine":
        records += genuine
    records += [(RecordType.COSIGNATURE, cosign(forged, g, SigningKey.generate()).encode()) for g in ghosts]
    write_records(run, records)
    return forged
