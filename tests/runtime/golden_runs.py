"""Golden runs: a fixed set of small multi-process runs, what of each is reproducible, and the comparison.

A golden file (``tests/runtime/golden/<name>.json``) holds what :func:`observe` reads from one
run of :data:`CONFIGS`: everything in the run directory that two runs of the same configuration
on the same code and machine reproduce bit for bit. ``tests/runtime/test_golden_runs.py`` runs
every configuration again on the code under test and compares field by field
(:func:`compare_with_golden`); ``scripts/record_golden`` writes the files (see "Golden runs" in
``docs/development.rst``).

What is compared:

* ``summary.json``: every field (status, step count, stop reason, exact losses, final weights
  digests per stage and overall, checkpoints kept, detections with stage, step, worker, unit,
  check and message, responses with their plans and audits, faults, replacements, resumes, unit
  counts, spot-check and redundancy counts, workers, the configuration);
* ``events.jsonl``: every event, in order, with every field;
* ``receipts.log``: every signed receipt and signed header, per worker in the order that worker
  signed them (the log interleaves workers in arrival order, which the scheduler decides), with
  every signed field but those listed below. Receipts commit to the tensors (inputs, outputs,
  weights, gradient traces, optimizer states) by digest, so every unit the run computed is
  compared;
* the manifest of every checkpoint left on disk (per-file and per-tensor digests, file sizes).

What is left out, and why:

* :data:`VOLATILE_KEYS`, wherever they occur, and :data:`VOLATILE_PATHS`: run ids, keys,
  signatures, spot-check secrets and every value derived from them (a receipt's chain digest, a
  digest over signed receipts, a spot-check commitment, a manifest's digest) are fresh per run;
  times and durations are measured; a worker's measurement commits to the runtime's source
  files, which a restructure changes by design;
* :data:`TEXT_NORMALISATIONS`: in fault reasons, measured waits and the transport library's
  wording of a closed connection (closed or reset, and the port) are replaced by placeholders;
  the rest of the reason is compared;
* ``attestation/`` (fresh keys, nonces and signed tokens; who was admitted, on which device and
  with which status is in the ``admitted`` events), the checkpoint files themselves (their
  digests are in the manifests), ``metrics.csv`` (the losses are in the summary, beside timings).

The run folder and the corpus path are written as placeholders: they say where a run was made,
not what it did. Nothing else is left out. Recording runs every configuration twice and refuses
to write a golden file the two runs disagree on, so a value that is not reproducible cannot get
into a golden file; each exclusion above was found by comparing two runs of the old code, under
load as well as on an idle machine, and none was added to make a comparison pass.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
#: The training text: a fixed file, so that edits to the package's sources never change the data.
CORPUS = GOLDEN_DIR / "corpus.txt"
#: The format tag of a golden file.
GOLDEN_FORMAT = "stagewarden.golden-run"
GOLDEN_VERSION = 1

#: Keys left out wherever they occur in the summary, the events and the receipts, with the reason.
VOLATILE_KEYS: dict[str, str] = {
    "run_id": "a fresh name per run (it carries the start time and random bytes)",
    "time": "wall-clock time of an event",
    "signed_at": "wall-clock time of a signature",
    "seconds": "measured duration",
    "wall_seconds": "measured duration",
    "tokens_per_second": "measured throughput",
    "stage_busy_seconds": "measured busy time per stage",
    "coordinator_key": "the coordinator's signing key is generated per run",
    "signer_key": "a worker's receipt key is generated per run",
    "signature": "Ed25519 signature by a per-run key",
    "prev_digest": "chains receipts through digests that cover run_id, signed_at and signer_key",
    "measurement": "commits to the runtime's source files, which a restructure changes by design",
    "secret": "the spot-check secret of a step, drawn fresh per run",
    "commitment": "commits to the spot-check secret, drawn fresh per run",
    "receipts_digest": "digest over the step's signed receipts (run_id, times, keys)",
    "evidence_digest": "digest over the signed receipts and headers that convict (run_id, times, keys)",
    "manifest": "digest of a checkpoint manifest, which names the run id",
}

#: Paths (``.``-joined keys, ``[*]`` for any list item) left out, where the key alone is too
#: common to leave out everywhere, with the reason.
VOLATILE_PATHS: dict[str, str] = {
    r".*audit\.window\[\*\]\.digest": "digest of a signed receipt (run_id, signing time, key)",
}

#: Rewrites of free text (fault reasons) where part of it is measured or comes from the operating
#: system: ``(pattern, replacement, why)``.
TEXT_NORMALISATIONS: tuple[tuple[str, str, str], ...] = (
    (r"\d+\.\d+ s\b", "<duration> s", "measured waits in a liveness verdict"),
    (
        r"\[[^\]]*/gloo/[^\]]*\].*",
        "<transport error>",
        "gloo's text for a closed connection: how the OS reported it (closed or reset) and the port",
    ),
)


#: The runtime's test hook ``STAGE:STEP``: that stage's worker exits abruptly (``os._exit``, as
#: a killed process) when step STEP starts, a point the run reaches the same way every time.
CRASH_ENV = "STAGEWARDEN_TEST_CRASH"


@dataclasses.dataclass(frozen=True)
class GoldenConfig:
    """One golden run: settings over :data:`BASE` and, for a resume, where a worker dies
    (``STAGE:STEP`` of :data:`CRASH_ENV`): the run then stops resumable and is resumed."""

    name: str
    settings: dict[str, Any]
    crash: str | None = None

    def run_settings(self) -> dict[str, Any]:
        return {**BASE, **self.settings}


#: The run every configuration starts from: 4 stages of a 4-layer, width-32 model, 2
#: micro-batches of 4 sequences of 16 bytes, 3 steps, seed 0, short liveness limits.
BASE: dict[str, Any] = dict(
    stages=4,
    microbatches=2,
    steps=3,
    schedule="1f1b",
    model=dict(n_layer=4, n_embd=32, block_size=16, n_head=4),
    batch_size=4,
    seed=0,
    heartbeat_timeout=6.0,
    silence_timeout=5.0,
    timeout=60.0,
)

_SPOT = dict(verification="spot_check", spot_check_rate=1.0)


def _attack(kind: str, stage: int, direction: str = "forward") -> dict[str, Any]:
    """An attack plan as JSON (the CLI's defaults: rate 1, seed 0) by ``stage`` from step 1."""
    return {"kind": kind, "stages": [stage], "start": 1, "rate": 1.0, "direction": direction}


#: Attack kinds on tensors sent between stages, each mounted by stage 1 on its activations.
TENSOR_ATTACKS = ("reverse", "random", "scale", "noise", "bitflip", "lazy", "replay")

CONFIGS: tuple[GoldenConfig, ...] = (
    GoldenConfig("clean", {}),
    GoldenConfig("clean_gpipe_spot_check", {"schedule": "gpipe", **_SPOT}),
    *(GoldenConfig(f"attack_{kind}", {"attack": _attack(kind, 1), **_SPOT}) for kind in TENSOR_ATTACKS),
    GoldenConfig("attack_bitflip_backward", {"attack": _attack("bitflip", 2, "backward"), **_SPOT}),
    GoldenConfig("attack_weights", {"attack": _attack("weights", 2), **_SPOT}),
    GoldenConfig("attack_optimizer", {"attack": _attack("optimizer", 2), **_SPOT}),
    GoldenConfig("attack_grad_drift", {"attack": _attack("grad_drift", 1), **_SPOT}),
    GoldenConfig("attack_swap_weights", {"attack": _attack("swap_weights", 2), **_SPOT}),
    GoldenConfig("attack_equivocate", {"attack": _attack("equivocate", 1, "backward"), **_SPOT}),
    GoldenConfig("attack_poison_data", {"attack": _attack("poison_data", 0), **_SPOT}),
    GoldenConfig(
        "attack_false_accuse",
        {"attack": _attack("false_accuse", 2), "verification": "redundant_neighbour", "response": "restart"},
    ),
    GoldenConfig("attack_withhold", {"attack": _attack("withhold", 1), "standby": 1, **_SPOT}),
    GoldenConfig("eject_standby", {"attack": _attack("reverse", 1), "standby": 1, "response": "eject", **_SPOT}),
    GoldenConfig("rollback", {"attack": _attack("reverse", 1), "standby": 1, "response": "rollback", **_SPOT}),
    GoldenConfig("skip_stage", {"attack": _attack("reverse", 1), "response": "skip_stage", **_SPOT}),
    GoldenConfig("redundant_neighbour_clean", {"verification": "redundant_neighbour"}),
    GoldenConfig(
        "redundant_neighbour_reverse",
        {"attack": _attack("reverse", 1), "verification": "redundant_neighbour", "standby": 1},
    ),
    # Checks settled before the next step starts: the checkpoint of step 2 is then written, or
    # not, whatever the timing, when stage 0 dies at the start of step 2.
    GoldenConfig("resume_after_crash", {"steps": 4, "overlap_checks": False}, crash="0:2"),
)


def config_named(name: str) -> GoldenConfig:
    """The configuration called ``name`` (``KeyError`` when there is none)."""
    for config in CONFIGS:
        if config.name == name:
            return config
    raise KeyError(name)


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


# ---------------------------------------------------------------------------------------------
# Running


def run(config: GoldenConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``config`` into ``run_dir`` (which must not exist) and return :func:`observe` of it.

    Must be called from a ``__main__`` guarded program or from pytest (see ``launch_local``).
    """
    from stagewarden.runtime.config import RunConfig
    from stagewarden.runtime.launch import LaunchError, launch_local

    settings = config.run_settings()
    # a checkpoint after every step, the default when the goldens were recorded
    data = {"checkpoint_every": 1, **settings, "data": [str(CORPUS)], "format": "stagewarden.run-config", "version": 1}
    run_config = RunConfig.from_json(data)
    if config.crash is None:
        launch_local(run_config, run_dir)
        return observe(run_dir)
    try:
        launch_local(run_config, run_dir, env={CRASH_ENV: config.crash})
    except LaunchError as exc:
        if not exc.resumable:
            raise
    else:
        raise AssertionError(f"{config.name}: the run went on after its worker died")
    launch_local(run_config, run_dir, resume=True)
    return observe(run_dir)


# ---------------------------------------------------------------------------------------------
# Observing a run directory


def _strip(value: Any, run_dir: Path, path: str = "") -> Any:
    """``value`` without :data:`VOLATILE_KEYS` and :data:`VOLATILE_PATHS` (at any depth), its
    texts rewritten by :data:`TEXT_NORMALISATIONS`, the run folder and the corpus path written as
    placeholders (they are where the run was made, not what it did) and floats as exact hex."""
    if isinstance(value, dict):
        kept = {}
        for key, item in sorted(value.items()):
            where = f"{path}.{key}" if path else key
            if key in VOLATILE_KEYS or any(re.fullmatch(rule, where) for rule in VOLATILE_PATHS):
                continue
            kept[key] = _strip(item, run_dir, where)
        return kept
    if isinstance(value, list):
        return [_strip(v, run_dir, f"{path}[*]") for v in value]
    if isinstance(value, str):
        text = value.replace(str(run_dir), "<run>").replace(str(CORPUS), "<corpus>")
        for pattern, replacement, _ in TEXT_NORMALISATIONS:
            text = re.sub(pattern, replacement, text)
        return text
    if isinstance(value, float):
        return {"float": value.hex()}  # exact, whatever JSON's float printing does
    return value


def _signed_records(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every receipt and header of the log, as their reproducible signed fields, per signer (step
    heads and cosignatures sign run-specific keys and times: the seal's own tests cover them)."""
    from stagewarden.attest.headers import parse_header
    from stagewarden.attest.receipt_log import RecordType, read_log
    from stagewarden.attest.receipts import parse_receipt

    per_worker: dict[str, list[dict[str, Any]]] = {}
    for record in read_log(run_dir / "receipts.log").records:
        if record.type is RecordType.RECEIPT:
            r = parse_receipt(record.payload)
            row: dict[str, Any] = {
                "record": "receipt",
                "stage": r.stage,
                "replica": r.replica,
                "step": r.step,
                "micro_batch": r.micro_batch,
                "kind": str(r.kind),
                "input": r.input_digest.hex(),
                "output": r.output_digest.hex(),
                "weights": r.weights_digest.hex(),
                "env": [r.env.torch_version, r.env.device, r.env.dtype, int(r.env.flags)],
            }
            worker = r.worker_id
        elif record.type is RecordType.HEADER:
            h = parse_header(record.payload)
            row = {
                "record": "header",
                "stage": h.sender_stage,
                "replica": h.sender_replica,
                "receiver_stage": h.receiver_stage,
                "step": h.step,
                "micro_batch": h.micro_batch,
                "kind": str(h.kind),
                "tensor": [h.tensor.dtype, list(h.tensor.shape), h.tensor.digest.hex()],
            }
            worker = h.sender
        else:
            continue
        per_worker.setdefault(worker, []).append(row)
    return dict(sorted(per_worker.items()))


def observe(run_dir: Path) -> dict[str, Any]:
    """What a golden file records of the run in ``run_dir`` (see the module docstring)."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    # the "updated" events (each update's weights and optimizer digests, for the audit's weights
    # chain) came after the golden files were recorded; the receipts they explain are compared
    events = [_strip(e, run_dir) for e in map(json.loads, lines) if e["event"] != "updated"]
    checkpoints = {
        folder.name: _strip(json.loads((folder / "manifest.json").read_text(encoding="utf-8")), run_dir)
        for folder in sorted((run_dir / "checkpoints").glob("step-*"))
    }
    return {
        "summary": _strip(summary, run_dir),
        "events": events,
        "signed_records": _signed_records(run_dir),
        "checkpoints": checkpoints,
    }


# ---------------------------------------------------------------------------------------------
# Comparing


def differences(expected: Any, actual: Any, path: str = "") -> Iterator[str]:
    """Every place where ``actual`` differs from ``expected``, as ``path: expected X, got Y``."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in actual:
                yield f"{where}: missing (expected {_short(expected[key])})"
            elif key not in expected:
                yield f"{where}: unexpected (got {_short(actual[key])})"
            else:
                yield from differences(expected[key], actual[key], where)
    elif isinstance(expected, list) and isinstance(actual, list):
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            yield from differences(e, a, f"{path}[{i}]")
        if len(expected) != len(actual):
            yield f"{path}: expected {len(expected)} items, got {len(actual)}"
    elif type(expected) is not type(actual) or expected != actual:
        yield f"{path}: expected {_short(expected)}, got {_short(actual)}"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def numerics_fingerprint() -> str:
    """A digest of torch's float32 CPU results on fixed inputs (matmul, softmax, layer norm, GELU,
    one AdamW step), with torch's version: equal on two machines when their kernels give the
    same bits, which the golden files' digests need. It uses no stagewarden code, so that no
    change to the package can change it."""
    import hashlib

    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = torch.randn(16, 64)
        w = torch.randn(64, 64, requires_grad=True)
        y = torch.nn.functional.gelu(torch.nn.functional.layer_norm((x @ w).softmax(-1), (64,)))
        torch.autograd.backward(y.square().mean())
        optimizer = torch.optim.AdamW([w], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        optimizer.step()
    h = hashlib.sha256(torch.__version__.encode() + b"\x00")
    for tensor in (y.detach(), w.detach()):
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def golden_document(config: GoldenConfig, observed: dict[str, Any], source: str) -> dict[str, Any]:
    """The content of ``config``'s golden file; ``source`` names the code it was recorded from."""
    return {
        "format": GOLDEN_FORMAT,
        "version": GOLDEN_VERSION,
        "name": config.name,
        "recorded": {"source": source, "numerics": numerics_fingerprint()},
        "settings": config.run_settings(),
        "crash": config.crash,
        "observed": observed,
    }


def compare_with_golden(config: GoldenConfig, golden: dict[str, Any], observed: dict[str, Any]) -> list[str]:
    """The differences between ``golden`` (a golden file's content) and ``observed`` for ``config``,
    each prefixed with the configuration's name; empty when they agree. Everything in the file is
    compared but ``recorded`` (where and on which numerics it was recorded)."""
    expected = {k: v for k, v in golden.items() if k != "recorded"}
    actual = {k: v for k, v in golden_document(config, observed, "").items() if k != "recorded"}
    return [f"{config.name}: {line}" for line in differences(expected, actual)]


# ---------------------------------------------------------------------------------------------
# Recording (scripts/record_golden runs this file as a program)


class RecordError(Exception):
    """The golden files cannot be recorded (the message says why)."""


def record(names: list[str], source: str, expected_root: Path | None) -> list[Path]:
    """Run each configuration in ``names`` (all when empty) twice, check that the two runs agree
    on everything :func:`observe` keeps, and only then write every golden file, each atomically.

    ``expected_root``: the source tree whose ``stagewarden`` package must be the one imported.
    """
    import shutil
    import tempfile

    import stagewarden

    imported = Path(stagewarden.__file__).resolve().parent.parent
    if expected_root is not None and imported != expected_root.resolve():
        raise RecordError(f"stagewarden is imported from {imported}, not from {expected_root}")
    try:
        configs = [config_named(n) for n in names] if names else list(CONFIGS)
    except KeyError as exc:
        raise RecordError(f"no golden configuration is called {exc.args[0]!r}") from None
    documents: list[tuple[GoldenConfig, dict[str, Any]]] = []
    for config in configs:
        print(f"{config.name}: running twice on {imported}", flush=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"golden-{config.name}-"))
        try:
            first, second = (run(config, scratch / f"run{i}") for i in (1, 2))
        except Exception as exc:  # a launch failure, said in one line
            raise RecordError(f"{config.name}: the run failed: {exc}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        unstable = list(differences(first, second))
        if unstable:
            lines = "\n  ".join(unstable[:20])
            raise RecordError(f"{config.name}: two runs of the same code disagree, so no golden file:\n  {lines}")
        documents.append((config, golden_document(config, first, source)))
    return [_write_atomically(golden_path(c.name), d) for c, d in documents]


def _write_atomically(path: Path, document: dict[str, Any]) -> Path:
    import os
    import tempfile

    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="scripts/record_golden", description="Record the golden runs (see docs/development.rst)."
    )
    parser.add_argument("--source", required=True, help="what the code recorded from is (commit, or a tree)")
    parser.add_argument("--expect-root", type=Path, help="fail unless stagewarden is imported from this tree")
    parser.add_argument("names", nargs="*", help="configurations to record (default: all)")
    args = parser.parse_args(argv)
    try:
        written = record(args.names, args.source, args.expect_root)
    except RecordError as exc:
        print(f"record_golden: {exc}", file=sys.stderr)
        return 2 if "no golden configuration" in str(exc) or "imported from" in str(exc) else 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
