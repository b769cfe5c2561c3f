"""The audit re-checks the attestation behind a run's results, attacked from the log holder's side:

* stored evidence swapped between workers, edited, truncated, deleted or forged under another vendor,
  in real run directories (the recorded ``stagewarden demo`` run under docs/report-example, and a
  tiny training run made here with a vendor folder whose root the auditor pins);
* results bound to another run, worker or stage, and two workers sharing a receipt key or a
  device (synthetic runs, whose verifier key the tests hold).
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from receipt_fixtures import small_run, write_run

from stagewarden.attest.audit import AuditReport, Severity, audit_run_dir
from stagewarden.attest.errors import ErrorCode
from stagewarden.attest.evidence import parse_evidence
from stagewarden.attest.result import parse_result_unverified
from stagewarden.attest.synthetic import SyntheticRun, attestation_result
from stagewarden.attest.vendor import init_vendor, load_vendor, make_evidence
from stagewarden.cli import cli

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from distributed_helpers import tiny_config  # noqa: E402

E = ErrorCode
RECORDED = Path(__file__).resolve().parents[2] / "docs" / "report-example" / "clean"


def _errors(report: AuditReport) -> list[tuple[ErrorCode, tuple[str, ...]]]:
    return [(f.code, f.workers) for f in report.errors]


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A copy of the recorded demo run (real evidence from the simulated vendor)."""
    return Path(shutil.copytree(RECORDED, tmp_path / "run"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny training run with attestation, and the vendor folder it was attested by."""
    from stagewarden.runtime.launch import launch_local

    base = tmp_path_factory.mktemp("trained")
    vendor = base / "vendor"
    init_vendor(vendor)
    launch_local(tiny_config(steps=1), base / "run", vendor_dir=vendor)
    return base / "run", vendor


def _copy(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained[0], tmp_path / "run"))


def _evidence(run: Path, worker: str) -> Path:
    return run / "attestation" / f"{worker}.evidence"


# -- stored evidence ---------------------------------------------------------------------------


def test_recorded_run_evidence_matches_its_results(recorded: Path) -> None:
    """The honest recorded run audits clean with its evidence re-checked."""
    assert audit_run_dir(recorded).clean


def test_swapped_evidence_names_both_workers(recorded: Path) -> None:
    """s0r0's and s1r0's evidence files swapped: each is an error naming its worker."""
    first, second = _evidence(recorded, "s0r0"), _evidence(recorded, "s1r0")
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    assert _errors(audit_run_dir(recorded)) == [
        (E.EVIDENCE_RESULT_MISMATCH, ("s0r0",)),
        (E.EVIDENCE_RESULT_MISMATCH, ("s1r0",)),
    ]


@pytest.mark.parametrize(
    ("where", "code"),
    [
        (74, E.EVIDENCE_RESULT_MISMATCH),  # a byte of the launch measurement
        (106, E.EVIDENCE_RESULT_MISMATCH),  # a byte of the report data (nonce and key binding)
        (30, E.EVIDENCE_RESULT_MISMATCH),  # a byte of the device id
        (-1, E.EVIDENCE_SIGNATURE),  # the last byte of the device's signature
    ],
)
def test_edited_evidence_is_an_error_naming_the_worker(recorded: Path, where: int, code: ErrorCode) -> None:
    """One byte of s1r0's evidence changed: an error naming s1r0, and nothing else."""
    path = _evidence(recorded, "s1r0")
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))
    assert _errors(audit_run_dir(recorded)) == [(code, ("s1r0",))]


def test_truncated_evidence_is_malformed(recorded: Path) -> None:
    path = _evidence(recorded, "s2r0")
    path.write_bytes(path.read_bytes()[:-10])
    assert _errors(audit_run_dir(recorded)) == [(E.EVIDENCE_MALFORMED, ("s2r0",))]


def test_deleted_evidence_is_a_warning(recorded: Path) -> None:
    """A run trained with attestation whose evidence file is gone: a warning naming the worker (the
    result, signed by the verifier, still attests the key)."""
    _evidence(recorded, "s3r0").unlink()
    report = audit_run_dir(recorded)
    assert report.clean
    missing = [f for f in report.findings if f.code is E.EVIDENCE_MISSING]
    assert [(f.workers, f.severity) for f in missing] == [(("s3r0",), Severity.WARNING)]


def test_trained_run_audits_clean_with_the_vendor_root_pinned(trained: tuple[Path, Path]) -> None:
    """A run trained here: results name the run, worker and stage; with the vendor root pinned the
    evidence chains to it; the CLI takes the vendor folder or its root.crt."""
    run, vendor = trained
    report = audit_run_dir(run, vendor_roots=[load_vendor(vendor).root.cert])
    assert report.clean, report.findings
    result = parse_result_unverified((run / "attestation" / "s1r0.ear").read_bytes().splitlines()[0])
    assert (result.worker, result.stage) == ("s1r0", "1") and result.run_id == report.run_id
    for root in (vendor, vendor / "root.crt"):
        outcome = CliRunner().invoke(cli, ["audit", str(run), "--vendor-root", str(root)])
        assert outcome.exit_code == 0, outcome.output


def test_evidence_forged_under_another_vendor(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """The holder makes its own vendor and signs evidence with every field of s0r0's result (device
    id, model, measurement, nonce and key): consistent with the result, so only the pinned vendor
    root tells it apart (CHAIN_ANCHOR naming s0r0)."""
    run = _copy(trained, tmp_path)
    genuine = parse_evidence(_evidence(run, "s0r0").read_bytes())
    result = parse_result_unverified((run / "attestation" / "s0r0.ear").read_bytes().splitlines()[-1])
    rogue = init_vendor(tmp_path / "rogue", hardware_model=genuine.hardware_model)
    assert result.attested_key is not None and result.nonce is not None
    forged = make_evidence(rogue, genuine.device_id, result.attested_key, result.nonce, genuine.measurement)
    _evidence(run, "s0r0").write_bytes(forged)
    assert audit_run_dir(run).clean  # without a pinned root: consistent with the result
    pinned = audit_run_dir(run, vendor_roots=[load_vendor(trained[1]).root.cert])
    assert _errors(pinned) == [(E.CHAIN_ANCHOR, ("s0r0",))]
    outcome = CliRunner().invoke(cli, ["audit", str(run), "--vendor-root", str(trained[1])])
    assert outcome.exit_code == 1 and "CHAIN_ANCHOR" in outcome.output


def test_unreadable_vendor_root_is_bad_input(trained: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_text("not a certificate\n")
    outcome = CliRunner().invoke(cli, ["audit", str(trained[0]), "--vendor-root", str(tmp_path / "root.pem")])
    assert outcome.exit_code == 2 and "holds no PEM certificate" in outcome.output


# -- bindings and sharing ----------------------------------------------------------------------


def _reissue(run: SyntheticRun, worker: str, **bound: object) -> None:
    """Replace ``worker``'s result with one the run's verifier signs with other fields."""
    issued = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) - dt.timedelta(minutes=1)
    key = bound.pop("key", bytes(run.keys[worker].verify_key))
    assert isinstance(key, bytes)
    name = bound.pop("as_worker", worker)
    assert isinstance(name, str)
    args = {"run_id": run.summary.run_id, "stage": next(w.stage for w in run.summary.workers if w.id == worker)}
    args.update(bound)
    token = attestation_result(run.verifier, key, name, issued, dt.timedelta(days=1), **args)  # type: ignore[arg-type]
    run.results[worker] = [token]


@pytest.mark.parametrize(
    "bound",
    [{"stage": 0}, {"run_id": "another-run"}, {"as_worker": "s0r0"}],
    ids=["stage", "run", "worker"],
)
def test_result_bound_elsewhere_is_an_error(tmp_path: Path, bound: dict[str, object]) -> None:
    """s1r0's result names stage 0, another run, or worker s0r0: RESULT_BINDING naming s1r0. (The
    synthetic verifier derives a device from the worker named, so the result issued to s0r0 also
    names s0r0's device: DEVICE_SHARED as well.)"""
    run = small_run()
    path = write_run(tmp_path, run, lambda r: _reissue(r, "s1r0", **bound))
    errors = _errors(audit_run_dir(path, run.verifier_key))
    assert errors[0] == (E.RESULT_BINDING, ("s1r0",))
    assert errors[1:] == ([(E.DEVICE_SHARED, ("s0r0", "s1r0"))] if "as_worker" in bound else [])


def test_two_workers_attested_with_one_receipt_key(tmp_path: Path) -> None:
    """s1r0's result attests s0r0's receipt key too: KEY_SHARED naming both (and the key is not
    s1r0's own, so its receipts are also unattested)."""
    run = small_run()
    path = write_run(tmp_path, run, lambda r: _reissue(r, "s1r0", key=bytes(r.keys["s0r0"].verify_key)))
    errors = _errors(audit_run_dir(path, run.verifier_key))
    assert (E.KEY_SHARED, ("s0r0", "s1r0")) in errors


def test_two_workers_attested_on_one_device(tmp_path: Path) -> None:
    """Both workers' results name one device at the same time: DEVICE_SHARED naming both."""
    run = small_run()

    def same_device(r: SyntheticRun) -> None:
        for worker in ("s0r0", "s1r0"):
            token = r.results[worker][0]
            result = parse_result_unverified(token)
            _reissue(r, worker)
            r.results[worker] = [_with_device(r, result, "shared-device")]

    path = write_run(tmp_path, run, same_device)
    assert _errors(audit_run_dir(path, run.verifier_key)) == [(E.DEVICE_SHARED, ("s0r0", "s1r0"))]


def _with_device(run: SyntheticRun, result, device: str) -> bytes:  # type: ignore[no-untyped-def]
    import dataclasses

    from stagewarden.attest.result import sign_result

    return sign_result(dataclasses.replace(result, device_id=device), run.verifier)


def test_one_device_for_two_workers_at_different_times_is_allowed(tmp_path: Path) -> None:
    """A device reassigned after the first worker's result expired is not shared."""
    import dataclasses

    from stagewarden.attest.result import sign_result

    run = small_run()

    def reassigned(r: SyntheticRun) -> None:
        first = parse_result_unverified(r.results["s0r0"][0])
        early = dataclasses.replace(
            first,
            device_id="reused",
            issued_at=first.issued_at - dt.timedelta(days=2),
            expires_at=first.issued_at - dt.timedelta(days=1),
        )
        second = dataclasses.replace(parse_result_unverified(r.results["s1r0"][0]), device_id="reused")
        r.results["s0r0"] = [sign_result(early, r.verifier), r.results["s0r0"][0]]
        r.results["s1r0"] = [sign_result(second, r.verifier)]

    path = write_run(tmp_path, run, reassigned)
    assert E.DEVICE_SHARED not in [code for code, _ in _errors(audit_run_dir(path, run.verifier_key))]
