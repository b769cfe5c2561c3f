"""The coordinator (rank 0): admits the workers by attestation, drives the steps, logs and links
the receipts, and writes the run directory.

It is trusted: it is also the verifier, the relying party and the only writer of the run
directory. Each step it sends ``step``, collects every worker's commitment (receipts and the
signed headers it received), checks that the digests link up between adjacent stages, calls
:meth:`Coordinator.verify_step`, and then sends ``update``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import blake3
import torch
from stagewarden.attest.clock import SystemClock
from stagewarden.attest.errors import AttestError, FormatError
from stagewarden.attest.files import atomic_write_text
from stagewarden.attest.headers import SignedHeader, TransferKind, parse_header
from stagewarden.attest.policy import Policy
from stagewarden.attest.receipt_log import ReceiptLog
from stagewarden.attest.receipts import Receipt, UnitKind, chain_genesis, parse_receipt, receipt_digest, verify_receipt
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.rundir import RunDirWriter, RunSummary, WorkerInfo
from stagewarden.attest.tensor_digest import digest_state_dict, digest_tensor
from stagewarden.attest.vendor import load_vendor, local_verifier
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.errors import RuntimeSetupError
from stagewarden.runtime.measure import code_digest, stage_measurement
from stagewarden.runtime.model import build_stage
from stagewarden.runtime.transport import Transport, TransportError
from stagewarden.runtime.worker import standby_id_for, worker_id_for

#: The ``runtime_version`` of the keys this module adds to ``summary.json``.
RUNTIME_SUMMARY_VERSION = 1
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.csv"
#: Test-only hook: when set to ``1``, the coordinator fetches units after every commitment and
#: checks their digests against the receipts (event ``fetch_check``).
FETCH_CHECK_ENV = "STAGEWARDEN_TEST_FETCH_CHECK"

_FETCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAX_FETCH_ELEMENTS = 1 << 28


class AdmissionRefused(RuntimeSetupError):
    """A worker's attestation failed; the run does not start."""


class RunFailed(RuntimeSetupError):
    """The run stopped: a peer died, timed out or broke the protocol."""


@dataclasses.dataclass(frozen=True)
class FetchedUnit:
    """What a worker returns for a FETCH: the unit's committed inputs and the weights it ran with.

    Attributes:
        stage: The stage asked.
        step: The step.
        micro_batch: The micro-batch.
        kind: ``forward`` or ``backward``.
        inputs: ``input`` (token ids or the received activation), ``targets`` on the last stage,
            ``grad_output`` for a backward unit of a stage other than the last.
        weights: The stage's state dict at the start of the step.
    """

    stage: int
    step: int
    micro_batch: int
    kind: str
    inputs: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]

    @property
    def weights_digest(self) -> bytes:
        """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of the weights."""
        return digest_state_dict(self.weights)


@dataclasses.dataclass
class StepCommit:
    """Everything the workers committed for one step, as the coordinator received it.

    Attributes:
        step: The step.
        receipts: Per stage, its forward and backward receipts in signing order.
        headers: Per receiving stage, the signed headers it received.
        loss: The step's loss, from the last stage.
        microbatch_losses: The micro-batch losses, from the last stage.
    """

    step: int
    receipts: dict[int, list[Receipt]]
    headers: dict[int, list[SignedHeader]]
    loss: float
    microbatch_losses: list[float]

    def receipt(self, stage: int, micro_batch: int, kind: UnitKind) -> Receipt | None:
        """The receipt of ``stage`` for one unit of this step, if committed."""
        return next((r for r in self.receipts.get(stage, []) if r.micro_batch == micro_batch and r.kind is kind), None)


class EventLog:
    """``events.jsonl``: one JSON object per line, appended and flushed as events happen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, event: str, **fields: Any) -> None:
        """Append an event with the current UTC time."""
        record = {"time": dt.datetime.now(dt.UTC).isoformat(), "event": event, **fields}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class Coordinator:
    """The coordinator process of a run.

    Args:
        config: The run configuration.
        run_dir: The run directory (must not hold a run yet).
        transport: The point-to-point transport (this process is rank 0).
        vendor_dir: The simulated vendor folder whose root the verifier pins (needed when attestation is on).
        run_id: The run id (default: a random one).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        transport: Transport,
        vendor_dir: str | None,
        run_id: str | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.transport = transport
        self.vendor_dir = vendor_dir
        self.run_id = run_id or f"run-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{os.urandom(4).hex()}"
        self.stage_ids = [worker_id_for(s) for s in range(config.stages)]
        self.standby_ids = [standby_id_for(k) for k in range(config.standby)]
        self.keys: dict[str, bytes] = {}
        self.prev: dict[str, bytes] = {}
        self.losses: list[float] = []
        self.metrics: list[tuple[int, float, float, float]] = []
        self.detections: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.counts = {"forward": 0, "backward": 0, "update": 0, "receipts": 0, "headers": 0}
        self.final_weights: dict[int, str] = {}
        self.status = "starting"
        self.wall_seconds = 0.0
        self.train_seconds = 0.0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = RunDirWriter(self.run_dir, self._summary())
        self.events = EventLog(self.run_dir / EVENTS_FILE)
        self.log: ReceiptLog | None = self.writer.create_log(sync="batch") if config.receipts else None

    # -- ranks ----------------------------------------------------------------------------------

    @staticmethod
    def rank_of(stage: int) -> int:
        """The rank of the worker of ``stage``."""
        return stage + 1

    def standby_rank(self, index: int) -> int:
        """The rank of standby worker ``index``."""
        return self.config.stages + 1 + index

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Admit the workers, train every step, release the workers and finish the run directory.

        Raises:
            AdmissionRefused: A worker's attestation failed (the others are sent home).
            RunFailed: A peer died, timed out or broke the protocol.
        """
        started = time.perf_counter()
        try:
            self.events.write("run_started", run_id=self.run_id, config=self.config.to_json())
            self.admit()
            self.status = "running"
            self._write_summary()
            train_start = time.perf_counter()
            for step in range(self.config.steps):
                self.train_step(step)
            self.train_seconds = time.perf_counter() - train_start
            self.status = "completed"
            for rank in range(1, self.config.world_size):
                self.transport.send_json(rank, {"type": "release"})
            self.events.write("run_completed", steps=len(self.losses), detections=len(self.detections))
        except AdmissionRefused as exc:
            self.status = "refused"
            self.events.write("run_stopped", reason=str(exc))
            raise
        except (TransportError, AttestError, FormatError, ValueError) as exc:
            self.status = "failed"
            message = exc.message if isinstance(exc, AttestError) else str(exc)
            self.events.write("run_failed", reason=message)
            raise RunFailed(f"the run failed: {message}") from None
        finally:
            self.wall_seconds = time.perf_counter() - started
            if self.status == "running":
                self.status = "failed"
            if self.log is not None:
                self.log.close()
            self._write_summary()
            self.events.close()

    # -- admission ------------------------------------------------------------------------------

    def reference_measurements(self) -> dict[str, bytes]:
        """The measurement each worker must present: computed here from the code, the
        configuration and the initial weights derived from the seed."""
        c = self.config
        code = code_digest()
        out = {}
        for s, wid in enumerate(self.stage_ids):
            weights = build_stage(c.model, c.stages, s, c.seed).state_dict()
            out[wid] = stage_measurement(c, s, weights, code)
        for wid in self.standby_ids:
            out[wid] = stage_measurement(c, None, None, code)
        return out

    def admit(self) -> None:
        """Send every worker its assignment and a nonce, appraise the evidence, admit or refuse."""
        c = self.config
        workers = [(self.rank_of(s), wid, s) for s, wid in enumerate(self.stage_ids)] + [
            (self.standby_rank(k), wid, None) for k, wid in enumerate(self.standby_ids)
        ]
        verifier = rp = None
        if c.attestation:
            if self.vendor_dir is None:
                raise AdmissionRefused("attestation is on but no vendor folder was given")
            references = self.reference_measurements()
            clock = SystemClock()
            verifier = local_verifier(load_vendor(self.vendor_dir), list(references.values()), Policy(), clock)
            rp = RelyingParty(verifier.verify_key, clock)
            self.writer.write_verifier_key(bytes(verifier.verify_key))
        nonces: dict[str, bytes] = {}
        for rank, wid, stage in workers:
            nonce = verifier.issue_nonce() if verifier is not None else None
            if nonce is not None:
                nonces[wid] = nonce
            role = "stage" if stage is not None else "standby"
            self.transport.send_json(
                rank,
                {
                    "type": "hello",
                    "run_id": self.run_id,
                    "worker_id": wid,
                    "role": role,
                    "stage": stage,
                    "nonce": nonce.hex() if nonce is not None else None,
                },
            )
        refusals: list[str] = []
        for rank, wid, stage in workers:
            msg = self.transport.recv_json(rank, "evidence")
            try:
                key = _hex(msg.get("receipt_key"), 32, "receipt_key")
                if msg.get("worker_id") != wid:
                    raise ValueError(f"rank {rank} answered as {msg.get('worker_id')!r}, not {wid!r}")
                if verifier is not None and rp is not None:
                    evidence = _hex(msg.get("evidence"), None, "evidence")
                    self.writer.write_evidence(wid, evidence)
                    appraisal = verifier.appraise_evidence(evidence, key, nonces[wid])
                    rp.admit(wid, appraisal.token, key, expected_nonce=nonces[wid])
                    self.writer.write_results(wid, [appraisal.token])
                    self.events.write(
                        "admitted",
                        worker=wid,
                        stage=stage,
                        rank=rank,
                        status=str(appraisal.result.status),
                        measurement=appraisal.result.measurement,
                        device=appraisal.result.device_id,
                    )
                else:
                    self.events.write("admitted", worker=wid, stage=stage, rank=rank, status="unattested")
                self.keys[wid] = key
                self.prev[wid] = chain_genesis(self.run_id, wid)
            except AttestError as exc:
                reason = f"{exc.code}: {exc.message}"
                self.events.write("refused", worker=wid, stage=stage, rank=rank, code=str(exc.code), reason=exc.message)
                refusals.append(
                    f"worker {wid} ({'stage ' + str(stage) if stage is not None else 'standby'}) "
                    f"was refused admission: {reason}"
                )
            except ValueError as exc:
                self.events.write("refused", worker=wid, stage=stage, rank=rank, code="MALFORMED", reason=str(exc))
                refusals.append(f"worker {wid} was refused admission: {exc}")
        if refusals:
            for rank, wid, _ in workers:
                self.transport.send_json(rank, {"type": "refused" if wid not in self.keys else "shutdown"})
            raise AdmissionRefused("; ".join(refusals))
        keys = {str(s): self.keys[wid].hex() for s, wid in enumerate(self.stage_ids)}
        ids = {str(s): wid for s, wid in enumerate(self.stage_ids)}
        for rank, _, _ in workers:
            self.transport.send_json(rank, {"type": "admitted", "keys": keys, "workers": ids})

    # -- steps ------------------------------------------------------------------------------------

    def train_step(self, step: int) -> None:
        """One step: ``step`` to every stage, collect and check the commitments, verify, ``update``."""
        c = self.config
        started = time.perf_counter()
        for s in range(c.stages):
            self.transport.send_json(self.rank_of(s), {"type": "step", "step": step})
        for k in range(c.standby):
            self.transport.send_json(self.standby_rank(k), {"type": "idle", "step": step})
        commit = self.collect(step)
        detections = self.check_links(commit)
        if os.environ.get(FETCH_CHECK_ENV) == "1":
            self._fetch_check(commit)
        detections += self.verify_step(step, commit)
        for d in detections:
            self.events.write("detection", **d)
        self.detections += detections
        for s in range(c.stages):
            self.transport.send_json(self.rank_of(s), {"type": "update", "step": step})
        for s, wid in enumerate(self.stage_ids):
            msg = self.transport.recv_json(self.rank_of(s), "updated")
            if msg.get("step") != step:
                raise TransportError(f"worker {wid} reported the update of step {msg.get('step')}, not {step}")
            self.final_weights[s] = _hex(msg.get("weights"), 32, "weights").hex()
            if c.receipts:
                receipt = self._accept_receipt(wid, s, step, _hex(msg.get("receipt"), None, "receipt"))
                if receipt.kind is not UnitKind.UPDATE:
                    raise TransportError(f"worker {wid} sent a {receipt.kind} receipt as its update receipt")
                self.counts["update"] += 1
        if self.log is not None:
            self.log.sync()
        seconds = time.perf_counter() - started
        tps = c.tokens_per_step / seconds if seconds > 0 else 0.0
        self.losses.append(commit.loss)
        self.metrics.append((step, commit.loss, tps, seconds))
        self.events.write("step", step=step, loss=commit.loss, tokens_per_second=tps, seconds=seconds)
        self._write_summary()
        self._write_metrics()

    def collect(self, step: int) -> StepCommit:
        """Receive every stage's commitment for ``step``; verify and log its receipts and headers."""
        c = self.config
        receipts: dict[int, list[Receipt]] = {}
        headers: dict[int, list[SignedHeader]] = {}
        loss, mb_losses = float("nan"), []
        for s, wid in enumerate(self.stage_ids):
            msg = self.transport.recv_json(self.rank_of(s), "commit")
            if msg.get("step") != step:
                raise TransportError(f"worker {wid} committed step {msg.get('step')}, not {step}")
            raw_receipts, raw_headers = msg.get("receipts"), msg.get("headers")
            if not isinstance(raw_receipts, list) or not isinstance(raw_headers, list):
                raise TransportError(f"worker {wid}'s commitment has no receipt or header list")
            receipts[s] = [self._accept_receipt(wid, s, step, _hex(r, None, "receipt")) for r in raw_receipts]
            for r in receipts[s]:
                self.counts[str(r.kind)] += 1
            headers[s] = []
            for raw in raw_headers:
                header = parse_header(_hex(raw, None, "header"))
                headers[s].append(header)
                if self.log is not None:
                    self.log.append_header(header)
                    self.counts["headers"] += 1
            if s == c.stages - 1:
                loss = _float(msg.get("loss"))
                mb_losses = [_float(v) for v in msg.get("microbatch_losses", [])]
        return StepCommit(step, receipts, headers, loss, mb_losses)

    def _accept_receipt(self, wid: str, stage: int, step: int, raw: bytes) -> Receipt:
        receipt = parse_receipt(raw)
        verify_receipt(receipt, self.keys[wid])
        if (receipt.run_id, receipt.worker_id, receipt.stage, receipt.step) != (self.run_id, wid, stage, step):
            raise TransportError(f"worker {wid} sent a receipt for another unit: {receipt.unit}")
        if receipt.prev_digest != self.prev[wid]:
            raise TransportError(f"worker {wid}'s receipt does not continue its hash chain")
        self.prev[wid] = receipt_digest(receipt)
        if self.log is not None:
            self.log.append_receipt(receipt)
            self.counts["receipts"] += 1
        return receipt

    def check_links(self, commit: StepCommit) -> list[dict[str, Any]]:
        """Check that adjacent stages agree on the tensors they exchanged and that the received
        signed headers match the senders' receipts; return one detection per disagreement."""
        c = self.config
        if not c.receipts:
            return []
        found: list[dict[str, Any]] = []
        for s in range(c.stages - 1):
            for m in range(c.microbatches):
                for kind, sender, receiver, transfer in (
                    (UnitKind.FORWARD, s, s + 1, TransferKind.ACTIVATION),
                    (UnitKind.BACKWARD, s + 1, s, TransferKind.GRADIENT),
                ):
                    out = commit.receipt(sender, m, kind)
                    inp = commit.receipt(receiver, m, kind)
                    header = next(
                        (h for h in commit.headers.get(receiver, []) if h.micro_batch == m and h.kind is transfer), None
                    )
                    where = {"step": commit.step, "micro_batch": m, "unit": str(kind)}
                    if out is None or inp is None:
                        found.append(
                            {
                                **where,
                                "check": "missing_receipt",
                                "stage": sender if out is None else receiver,
                                "message": "a committed receipt is missing",
                            }
                        )
                        continue
                    if out.output_digest != inp.input_digest:
                        found.append(
                            {
                                **where,
                                "check": "link",
                                "stage": sender,
                                "message": f"the {kind} output of stage {sender} differs from the input "
                                f"of stage {receiver}",
                            }
                        )
                    if header is None or header.tensor.digest != out.output_digest:
                        found.append(
                            {
                                **where,
                                "check": "header",
                                "stage": sender,
                                "message": f"the signed {transfer} header stage {receiver} received does "
                                f"not match stage {sender}'s receipt",
                            }
                        )
        return found

    def verify_step(self, step: int, commit: StepCommit) -> list[dict[str, Any]]:
        """The verification hook, called after every commitment and before the update.

        With ``verification = "none"`` it checks nothing and returns no detections. A verifier
        (spot checks by re-execution, redundant neighbours) challenges units here with
        :meth:`fetch`; each detection it returns is a JSON object with at least ``step``,
        ``stage``, ``check`` and ``message``, logged as a ``detection`` event and in
        ``summary.json``.
        """
        return []

    # -- FETCH ------------------------------------------------------------------------------------

    def fetch(self, stage: int, step: int, micro_batch: int, kind: str) -> FetchedUnit:
        """Ask the worker of ``stage`` for one committed unit's inputs and the weights it ran with.

        Valid between a step's commitment and the next step. The tensors are checked against the
        digests the worker announces; compare them with the receipt to catch a worker that lies.

        Raises:
            TransportError: The worker does not keep the unit, or sent a malformed answer.
        """
        rank = self.rank_of(stage)
        self.transport.send_json(rank, {"type": "fetch", "step": step, "micro_batch": micro_batch, "kind": kind})
        msg = self.transport.recv_json(rank, "fetched")
        if "error" in msg:
            raise TransportError(str(msg["error"]))
        inputs: dict[str, torch.Tensor] = {}
        weights: dict[str, torch.Tensor] = {}
        for item in msg.get("tensors", []):
            name, dtype, shape = item["name"], _FETCH_DTYPES.get(item["dtype"]), tuple(item["shape"])
            if (
                dtype is None
                or not all(isinstance(d, int) and d >= 0 for d in shape)
                or _numel(shape) > _MAX_FETCH_ELEMENTS
            ):
                raise TransportError(f"worker of stage {stage} announced an unacceptable tensor {name!r}")
            tensor = self.transport.recv_tensor(rank, dtype, shape).cpu()
            if digest_tensor(tensor).hex() != item["digest"]:
                raise TransportError(f"fetched tensor {name!r} of stage {stage} does not match its announced digest")
            group, _, key = name.partition(".")
            (inputs if group == "input" else weights)[key] = tensor
        return FetchedUnit(stage, step, micro_batch, kind, inputs, weights)

    def _fetch_check(self, commit: StepCommit) -> None:
        c = self.config
        for s in range(c.stages):
            for m, kind in ((0, UnitKind.FORWARD), (c.microbatches - 1, UnitKind.BACKWARD)):
                unit = self.fetch(s, commit.step, m, str(kind))
                receipt = commit.receipt(s, m, kind)
                assert receipt is not None
                if kind is UnitKind.FORWARD:
                    input_ok = digest_tensor(unit.inputs["input"]) == receipt.input_digest
                else:
                    source = unit.inputs.get("grad_output", unit.inputs.get("targets"))
                    input_ok = source is not None and digest_tensor(source) == receipt.input_digest
                self.events.write(
                    "fetch_check",
                    stage=s,
                    step=commit.step,
                    micro_batch=m,
                    kind=str(kind),
                    input_ok=input_ok,
                    weights_ok=unit.weights_digest == receipt.weights_digest,
                )

    # -- run directory ----------------------------------------------------------------------------

    def _summary(self) -> RunSummary:
        c = self.config
        tokens = c.tokens_per_step * len(self.losses)
        final = [self.final_weights.get(s) for s in range(c.stages)]
        model_digest = blake3.blake3(b"".join(bytes.fromhex(d) for d in final if d)).hexdigest() if all(final) else None
        extra = {
            "runtime_version": RUNTIME_SUMMARY_VERSION,
            "status": self.status,
            "config": c.to_json(),
            "steps_completed": len(self.losses),
            "losses": list(self.losses),
            "tokens_per_second": tokens / self.train_seconds
            if self.train_seconds > 0
            else (sum(m[2] for m in self.metrics) / len(self.metrics) if self.metrics else 0.0),
            "wall_seconds": self.wall_seconds,
            "units": {k: self.counts[k] for k in ("forward", "backward", "update")},
            "receipts": self.counts["receipts"],
            "headers": self.counts["headers"],
            "detections": list(self.detections),
            "false_alarms": 0,
            "responses": list(self.responses),
            "final_weights": {"stages": final, "digest": model_digest},
            "standby": list(self.standby_ids),
            "attestation": c.attestation,
        }
        workers = tuple(WorkerInfo(wid, s, 0) for s, wid in enumerate(self.stage_ids))
        return RunSummary(
            run_id=self.run_id,
            stages=c.stages,
            replicas=1,
            micro_batches=c.microbatches,
            steps=len(self.losses),
            workers=workers,
            extra=extra,
        )

    def _write_summary(self) -> None:
        self.writer.write_summary(self._summary())

    def _write_metrics(self) -> None:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["step", "loss", "tokens_per_second", "wall_seconds"])
        for step, loss, tps, seconds in self.metrics:
            w.writerow([step, repr(loss), f"{tps:.1f}", f"{seconds:.4f}"])
        atomic_write_text(self.run_dir / METRICS_FILE, out.getvalue())


def _hex(value: Any, size: int | None, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a hex string")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not hex") from None
    if size is not None and len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(data)}")
    return data


def _float(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("a loss must be a float in hex notation")
    return float.fromhex(value)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
