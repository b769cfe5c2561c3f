"""Run directories whose workers were admitted with Intel quotes, for the report tests.

A recorded ``stagewarden demo`` run (docs/report-example) is copied and every simulated attestation
result in it is replaced by the EAR a DCAP verifier issues for the real Intel TDX sample quote
(tests/attest/data, verified here by dcap-qvl against its real collateral), under a verifier key of
the test's own that replaces ``attestation/verifier.pub``. The sample was made for someone else's
REPORTDATA, so, as the quote the worker would have produced, its verified report is given the
REPORTDATA that binds the worker's nonce and receipt key (read from the simulated result) before
the appraisal; its Intel signature chain, TCB status and measurements stay the sample's. Each EAR
keeps the validity window of the result it replaces, so the receipts stay attested. The worker's
evidence file is removed: the sample quote on disk keeps the sample's REPORTDATA, which binds no
key of the worker's, and the audit re-checks stored evidence against the EAR (a missing evidence
file is only a warning).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from nacl.signing import SigningKey

from stagewarden.attest.dcap import dcap_report_data, verify_quote
from stagewarden.attest.dcap_policy import Binding, DcapPolicy, appraise_verified
from stagewarden.attest.ear import ear_from_appraisal, sign_ear
from stagewarden.attest.result import parse_result_unverified
from stagewarden.attest.rundir import ATTESTATION_DIR, RunDir, RunDirWriter

ROOT = Path(__file__).resolve().parents[2]
#: The verifier of the dcap runs (its public key replaces the run's ``attestation/verifier.pub``).
DCAP_VERIFIER = SigningKey(b"\x5a" * 32)


def _samples() -> ModuleType:
    """tests/attest/dcap_samples.py (the real Intel samples and the instant they verify at)."""
    spec = importlib.util.spec_from_file_location("dcap_samples", ROOT / "tests" / "attest" / "dcap_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ear(token: bytes, verifier: SigningKey) -> bytes:
    """The EAR, signed by ``verifier``, that admits the worker the simulated result ``token`` admitted."""
    samples = _samples()
    simulated = parse_result_unverified(token)
    verified = verify_quote(samples.quote(), samples.collateral(), samples.instant(samples.AT))
    report = dataclasses.replace(verified.report, report_data=dcap_report_data(simulated.nonce, simulated.attested_key))
    policy = DcapPolicy()
    appraisal = appraise_verified(
        dataclasses.replace(verified, report=report), policy, Binding(simulated.nonce, simulated.attested_key)
    )
    assert appraisal.accepted, appraisal
    result = ear_from_appraisal(
        appraisal, policy, verifier.verify_key, simulated.issued_at, simulated.nonce, simulated.attested_key
    )
    result = dataclasses.replace(result, issued_at=simulated.issued_at, expires_at=simulated.expires_at)
    return sign_ear(result, verifier)


def make_dcap_run(source: Path, target: Path, verifier: SigningKey = DCAP_VERIFIER) -> Path:
    """Copy the run directory ``source`` to ``target`` with every attestation result an EAR for the
    real TDX sample (see the module docstring); return ``target``."""
    shutil.copytree(source, target)
    run = RunDir(target)
    writer = RunDirWriter.reopen(target, run.summary)
    writer.write_verifier_key(bytes(verifier.verify_key))
    for results in sorted((target / ATTESTATION_DIR).glob("*.ear")):
        worker = results.stem
        writer.write_results(worker, [_ear(token, verifier) for token in run.results(worker)])
        (target / ATTESTATION_DIR / f"{worker}.evidence").unlink(missing_ok=True)
    return target
