"""In-process tests of ``stagewarden attest verify-quote`` and ``fetch-collateral`` on the real samples (no network:
collateral is served by a local PCCS stand-in on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from dcap_samples import (
    AT,
    COLLATERAL,
    MRTD,
    OUTDATED_AT,
    OUTDATED_COLLATERAL,
    OUTDATED_QUOTE,
    PCK_CRL_NEXT_UPDATE,
    QUOTE,
    collateral_fields,
    instant,
)
from nacl.signing import SigningKey

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.ear import EarResult, verify_ear
from stagewarden.cli import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["attest", *args])
    return result.exit_code, result.output


def verify(*args: str, quote: Path = QUOTE, collateral: Path = COLLATERAL, at: int = AT) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out = run(
        "verify-quote", str(quote), "--collateral", str(collateral), "--at", str(at), "--format", "json", *args
    )
    return code, json.loads(out)


def test_sample_is_accepted_with_its_measurements() -> None:
    """The real TDX sample: exit 0, UpToDate, MRTD and RTMRs printed, an EAR issued."""
    code, out = verify()
    assert code == 0, out
    assert out["tee"] == "tdx" and out["status"] == "UpToDate" and out["accepted"] is True
    assert out["advisories"] == [] and out["reasons"] == []
    assert out["measurements"]["mrtd"] == MRTD and len(out["measurements"]["rtmr3"]) == 96
    assert len(out["report_data"]) == 128
    assert out["ear"]["status"] == "affirming"


def test_text_output() -> None:
    """The text form says ACCEPTED, the TCB status and the MRTD, and prints the EAR token."""
    code, out = run("verify-quote", str(QUOTE), "--collateral", str(COLLATERAL), "--at", str(AT))
    assert code == 0 and "ACCEPTED" in out and "UpToDate" in out and MRTD in out
    assert "not appraised" in out and out.strip().splitlines()[-1].count(".") == 2


def test_outdated_sample_is_rejected_with_its_code() -> None:
    """The outdated sample at a time inside its collateral: exit 1, DCAP_TCB_NO_MATCH."""
    code, out = verify(quote=OUTDATED_QUOTE, collateral=OUTDATED_COLLATERAL, at=OUTDATED_AT)
    assert code == 1 and out["accepted"] is False and out["code"] == "DCAP_TCB_NO_MATCH"
    code, text = run(
        "verify-quote", str(OUTDATED_QUOTE), "--collateral", str(OUTDATED_COLLATERAL), "--at", str(OUTDATED_AT)
    )
    assert code == 1 and "REJECTED" in text and "DCAP_TCB_NO_MATCH" in text


@pytest.mark.parametrize(
    ("at", "code"), [(AT - 86400, "DCAP_COLLATERAL_NOT_YET_VALID"), (PCK_CRL_NEXT_UPDATE, "DCAP_COLLATERAL_EXPIRED")]
)
def test_times_outside_the_collateral(at: int, code: str) -> None:
    """A time before issue or at nextUpdate: exit 1 with the time code."""
    status, out = verify(at=at)
    assert status == 1 and out["code"] == code


def test_flipped_quote_byte_is_rejected(tmp_path: Path) -> None:
    """A quote with one byte of its TD report changed: exit 1, DCAP_QUOTE_SIGNATURE, the claimed MRTD still shown."""
    forged = bytearray(QUOTE.read_bytes())
    forged[300] ^= 0x80
    path = tmp_path / "forged"
    path.write_bytes(bytes(forged))
    code, out = verify(quote=path)
    assert code == 1 and out["code"] == "DCAP_QUOTE_SIGNATURE" and out["status"] is None


def test_swapped_qe_identity_is_rejected(tmp_path: Path) -> None:
    """Collateral whose QE identity is another bundle's (with its own signature): exit 1 with a stable code."""
    fields = collateral_fields() | {
        k: collateral_fields(OUTDATED_COLLATERAL)[k] for k in ("qe_identity", "qe_identity_signature")
    }
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(fields))
    code, out = verify(collateral=path)
    assert code == 1 and out["code"] == "DCAP_COLLATERAL_NOT_YET_VALID"


def test_binding_is_checked_with_nonce_and_key() -> None:
    """--nonce/--key: the sample binds no key of ours, so exit 1 with KEY_BINDING."""
    code, out = verify("--nonce", "11" * 32, "--key", "22" * 32)
    assert code == 1 and out["code"] == "KEY_BINDING" and out["status"] == "UpToDate"


def test_policy_reference_values_and_stage(tmp_path: Path) -> None:
    """A policy with the sample's MRTD for stage 0 accepts it as stage 0; --stage 1 has no such values."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nreference_values:\n  '0':\n    - {{mrtd: {MRTD}}}\n")
    code, out = verify("--policy", str(policy))
    assert code == 0 and out["stage"] == "0" and out["measurements_appraised"] is True
    assert out["ear"]["trust_vector"]["executables"] == 2
    code, out = verify("--policy", str(policy), "--stage", "1")
    assert code == 1 and out["code"] == "DCAP_MEASUREMENT_MISMATCH"


def written_ear(tmp_path: Path, quote: Path, collateral: Path, at: int, *args: str) -> EarResult:
    """Run verify-quote with --verifier-key and --result-out (it must accept); the EAR it wrote, verified under
    that key."""
    key = SigningKey.generate()
    key_file, ear_file = tmp_path / "verifier.key", tmp_path / "result.ear"
    key_file.write_text(bytes(key).hex() + "\n")
    code, out = verify(
        "--verifier-key", str(key_file), "--result-out", str(ear_file), *args, quote=quote, collateral=collateral, at=at
    )
    assert code == 0, out
    assert out["ear"]["verifier_public_key"] == bytes(key.verify_key).hex()
    return verify_ear(ear_file.read_bytes().strip(), key.verify_key, FixedClock(instant(at)))


def test_result_out_writes_a_verifiable_ear(tmp_path: Path) -> None:
    """--result-out with --verifier-key writes an EAR that verifies under that key."""
    assert written_ear(tmp_path, QUOTE, COLLATERAL, AT).measurements["mrtd"] == MRTD


@pytest.mark.parametrize(
    "args",
    [
        ["verify-quote", "missing-file", "--collateral", str(COLLATERAL)],
        ["verify-quote", str(QUOTE), "--collateral", "missing.json"],
        ["verify-quote", str(QUOTE)],
        ["verify-quote", str(QUOTE), "--collateral", str(COLLATERAL), "--allow-status", "Sunny"],
        ["verify-quote", str(QUOTE), "--collateral", str(COLLATERAL), "--nonce", "11" * 32],
        ["verify-quote", str(QUOTE), "--collateral", str(COLLATERAL), "--nonce", "11", "--key", "22" * 32],
        ["verify-quote", str(QUOTE), "--collateral", str(COLLATERAL), "--at", "-5"],
        ["verify-quote", str(QUOTE), "--collateral", str(QUOTE)],
        ["verify-quote", str(QUOTE), "--collateral", str(COLLATERAL), "--policy", str(QUOTE)],
        ["fetch-collateral", str(QUOTE)],
    ],
)
def test_bad_input_exits_2(args: list[str]) -> None:
    """Missing files, a quote given as collateral, bad flags: exit 2 with one line, no traceback."""
    code, out = run(*args)
    assert code == 2, out
    assert "Traceback" not in out


def test_allow_status_is_shown_in_the_reasons() -> None:
    """--allow-status accepts known statuses (the sample is UpToDate anyway) and is still exit 0."""
    code, out = verify("--allow-status", "SWHardeningNeeded", "--allow-status", "ConfigurationAndSWHardeningNeeded")
    assert code == 0 and out["accepted"]


class _PCCS(http.server.BaseHTTPRequestHandler):
    """Serves the sample bundle the way a PCCS serves its v4 API (issuer chains URL-encoded in headers)."""

    bundle: dict[str, str] = {}
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802  (the handler's name is http.server's)
        b = self.bundle
        path = urllib.parse.urlsplit(self.path).path
        self.paths.append(path)
        tcb = (
            f'{{"tcbInfo":{b["tcb_info"]},"signature":"{b["tcb_info_signature"]}"}}'.encode(),
            "TCB-Info-Issuer-Chain",
            "tcb_info",
        )
        qe_identity = (
            f'{{"enclaveIdentity":{b["qe_identity"]},"signature":"{b["qe_identity_signature"]}"}}'.encode(),
            "SGX-Enclave-Identity-Issuer-Chain",
            "qe_identity",
        )
        answers = {
            "/sgx/certification/v4/pckcrl": (bytes.fromhex(b["pck_crl"]), "SGX-PCK-CRL-Issuer-Chain", "pck_crl"),
            "/sgx/certification/v4/rootcacrl": (b["root_ca_crl"].encode(), None, None),
        }
        for tee in ("tdx", "sgx"):  # the one bundle under both TEEs' paths: `paths` shows which were asked
            answers[f"/{tee}/certification/v4/tcb"] = tcb
            answers[f"/{tee}/certification/v4/qe/identity"] = qe_identity
        if path not in answers:
            self.send_response(404)
            self.end_headers()
            return
        body, header, field = answers[path]
        self.send_response(200)
        if header is not None:
            self.send_header(header, urllib.parse.quote(b[f"{field}_issuer_chain"]))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(bundle: dict[str, str]) -> Iterator[str]:
    """A PCCS stand-in on 127.0.0.1 serving ``bundle`` while the block runs; yields its base URL."""
    _PCCS.bundle, _PCCS.paths = bundle, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PCCS)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def pccs() -> Iterator[str]:
    """A PCCS stand-in serving the TDX sample collateral; yields its base URL."""
    with serving(collateral_fields()) as url:
        yield url


def test_fetch_into_a_cache_then_verify_from_it(tmp_path: Path, pccs: str) -> None:
    """fetch-collateral downloads the bundle into the cache; verify-quote --cache then accepts the sample."""
    cache = tmp_path / "cache"
    code, out = run("fetch-collateral", str(QUOTE), "--pccs-url", pccs, "--cache", str(cache), "--format", "json")
    assert code == 0, out
    fetched = json.loads(out)
    assert fetched["fmspc"] == "B0C06F000000" and fetched["tcb"] == "TDX"
    assert (cache / "tdx-B0C06F000000-platform.json").is_file()
    assert "/tdx/certification/v4/tcb" in _PCCS.paths
    code, out = run("verify-quote", str(QUOTE), "--cache", str(cache), "--at", str(AT), "--format", "json")
    assert code == 0 and json.loads(out)["status"] == "UpToDate"


def test_fetch_to_a_file(tmp_path: Path, pccs: str) -> None:
    """--out writes the bundle as a collateral file that verify-quote accepts."""
    target = tmp_path / "bundle.json"
    code, out = run("fetch-collateral", str(QUOTE), "--pccs-url", pccs, "--out", str(target))
    assert code == 0 and "B0C06F000000" in out
    assert verify(collateral=target)[0] == 0


def test_fetch_failures(tmp_path: Path, pccs: str) -> None:
    """A service that answers 404, or nothing listening: exit 1 with DCAP_FETCH_FAILED and nothing written."""
    target = tmp_path / "bundle.json"
    for url in (pccs + "/nothing-here", "http://127.0.0.1:9"):
        code, out = run("fetch-collateral", str(QUOTE), "--pccs-url", url, "--out", str(target), "--timeout", "5")
        assert code == 1 and "DCAP_FETCH_FAILED" in out, out
    assert not target.exists()
    code, out = run("fetch-collateral", str(COLLATERAL), "--pccs-url", pccs, "--out", str(target))
    assert code == 2 and "DCAP_QUOTE_MALFORMED" in out


def test_empty_cache_is_a_rejection(tmp_path: Path) -> None:
    """verify-quote --cache with no bundle for the quote's platform: exit 1, DCAP_COLLATERAL_MISSING."""
    code, out = run("verify-quote", str(QUOTE), "--cache", str(tmp_path), "--format", "json")
    assert code == 1 and json.loads(out)["code"] == "DCAP_COLLATERAL_MISSING"
