"""The report's notice says what the runs' attestation was, as their verified results show it:
the software model for simulated runs, Intel quotes for runs admitted with verified EARs, which
run used which when they differ; never what a run directory's holder wrote into summary.json."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import RECORDED_RUNS
from dcap_runs import make_dcap_run
from nacl.signing import SigningKey

from stagewarden.attest.ear import parse_ear_unverified, sign_ear
from stagewarden.attest.rundir import ATTESTATION_DIR, VERIFIER_KEY_FILE
from stagewarden.prover import Report, verify
from stagewarden.report import build_report, read_run
from stagewarden.report.attestation_kinds import AttestationKind, run_attestation_kind, tee_notice
from stagewarden.report.modelling import (
    DCAP_ADMISSION,
    DCAP_NOTICE,
    MIXED_OPENING,
    SIMULATED_ADMISSION,
    TEE_NOTICE,
    UNATTESTED_ADMISSION,
    UNVERIFIED_ADMISSION,
)
from stagewarden.report.run_pages import _evidence_source
from stagewarden.spec import LoadedSpec, load_example

CLEAN, ATTACKED = RECORDED_RUNS
INTEL_CLAIM = "admitted with Intel TDX/SGX quotes"


def _banners(index: Path) -> dict[str, str]:
    """The banner of every HTML page of a report, as plain text."""
    out = {}
    for page in sorted(index.parent.glob("*.html")):
        found = re.findall(r'<div class="stagewarden-notice"[^>]*>(.*?)</div>', page.read_text(encoding="utf-8"), re.S)
        assert len(found) == 1, page.name
        out[page.name] = " ".join(html.unescape(re.sub(r"<[^>]+>", "", found[0])).split())
    return out


def _banner_of(notice: str) -> str:
    return f"Modelling assumption: {notice} All modelling assumptions."


def _first_assumption(index: Path) -> str:
    """The first item of the modelling page's list, as plain text."""
    page = (index.parent / "modelling.html").read_text(encoding="utf-8")
    item = re.search(r"<ol[^>]*>\s*<li>(.*?)</li>", page, re.S)
    assert item is not None
    text = html.unescape(re.sub(r"<[^>]+>", " ", item.group(1))).replace("\u2019", "'")  # Sphinx's smart quotes
    return " ".join(text.split())


def _assert_every_page_says(index: Path, notice: str) -> None:
    banners = _banners(index)
    assert len(banners) >= 9
    assert set(banners.values()) == {_banner_of(notice)}, banners
    assert _first_assumption(index) == f"{notice} (documentation: attestation)"


def _set_config(run: Path, **fields: object) -> None:
    """Edit the run's summary.json as its holder can: no signature covers it."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    summary["config"].update(fields)
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


@pytest.fixture(scope="module")
def demo() -> tuple[LoadedSpec, Report]:
    """The demo spec and its verdicts (proved once for every report of this module)."""
    loaded = load_example("demo")
    return loaded, verify(loaded)


@pytest.fixture(scope="module")
def dcap_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorded clean run with every worker admitted by an EAR for the real TDX sample quote."""
    return make_dcap_run(CLEAN, tmp_path_factory.mktemp("dcap") / "clean")


def _copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


# -- the kind of each run, from its verified results --------------------------------------------


def test_recorded_runs_are_simulated() -> None:
    """The recorded demo runs attested with the simulated TEE, and the notice is the software model's."""
    runs = [read_run(CLEAN), read_run(ATTACKED)]
    assert [run_attestation_kind(r) for r in runs] == [AttestationKind.SIMULATED] * 2
    assert tee_notice(runs) == tee_notice([]) == TEE_NOTICE
    assert _evidence_source(runs[0]) == "The evidence and the verifier are the simulated TEE."


def test_verified_ears_make_a_dcap_run(dcap_run: Path) -> None:
    """Every worker's EAR verifies and the audit accepts them: the run is dcap, the notice says Intel quotes."""
    run = read_run(dcap_run)
    assert {(a.kind, a.signature, a.tcb_status) for a in run.attestations} == {("dcap", "valid", "UpToDate")}
    assert run_attestation_kind(run) is AttestationKind.DCAP
    assert tee_notice([run]) == DCAP_NOTICE
    assert "Intel TDX/SGX quotes" in _evidence_source(run) and "summary.json" not in _evidence_source(run)


@pytest.mark.parametrize("claimed", [{"attestation_kind": "dcap"}, {"attestation_kind": "dcap", "attestation": True}])
def test_config_claiming_dcap_does_not_make_a_simulated_run_dcap(tmp_path: Path, claimed: dict[str, object]) -> None:
    """Attacker: summary.json's config edited to name the dcap kind while the results are simulated."""
    path = _copy(CLEAN, tmp_path)
    _set_config(path, **claimed)
    run = read_run(path)
    assert run.config["attestation_kind"] == "dcap"  # the edit is what the report reads as configuration
    assert run_attestation_kind(run) is AttestationKind.SIMULATED
    assert tee_notice([run]) == TEE_NOTICE
    said = _evidence_source(run)
    assert "Intel TDX/SGX quotes" not in said and "simulated TEE" in said and "nothing checks that field" in said


def test_config_naming_simulated_does_not_hide_verified_ears(tmp_path: Path, dcap_run: Path) -> None:
    """The configuration is not read either way: a dcap run whose summary says simulated stays dcap."""
    path = _copy(dcap_run, tmp_path)
    _set_config(path, attestation_kind="simulated")
    assert run_attestation_kind(read_run(path)) is AttestationKind.DCAP


def _forged(token: bytes) -> bytes:
    """``token``'s EAR signed by a key other than the run's verifier."""
    return sign_ear(parse_ear_unverified(token), SigningKey(b"\x66" * 32))


def _replace_worker(path: Path, worker: str, change: str) -> None:
    """One of the ways the holder of a dcap run directory can tamper with a worker's results."""
    results = path / ATTESTATION_DIR / f"{worker}.ear"
    token = results.read_bytes().strip()
    if change == "forged":
        results.write_bytes(_forged(token) + b"\n")
    elif change == "forged earlier line":  # the latest result verifies; an earlier one does not
        results.write_bytes(_forged(token) + b"\n" + token + b"\n")
    elif change == "simulated":
        results.write_bytes((CLEAN / ATTESTATION_DIR / f"{worker}.ear").read_bytes())
    elif change == "removed":
        results.unlink()
    elif change == "garbage":
        results.write_bytes(token[:40] + b"\n")
    else:
        raise AssertionError(change)


@pytest.mark.parametrize("change", ["forged", "forged earlier line", "simulated", "removed", "garbage"])
def test_one_tampered_worker_makes_the_run_unverified(tmp_path: Path, dcap_run: Path, change: str) -> None:
    """Attacker: one worker's results of a dcap run forged, mixed, removed or cut: no Intel claim for the run."""
    path = _copy(dcap_run, tmp_path)
    _replace_worker(path, "s2r0", change)
    run = read_run(path)
    assert run_attestation_kind(run) is AttestationKind.UNVERIFIED
    notice = tee_notice([run])
    assert notice == f"{MIXED_OPENING} Run 1 (run): {UNVERIFIED_ADMISSION}."
    assert INTEL_CLAIM not in notice and "not every worker" in _evidence_source(run)


def test_swapped_verifier_key_makes_the_run_unverified(tmp_path: Path, dcap_run: Path) -> None:
    """Attacker: verifier.pub replaced, so no EAR verifies against the key the run ships."""
    path = _copy(dcap_run, tmp_path)
    (path / ATTESTATION_DIR / VERIFIER_KEY_FILE).write_text(bytes(SigningKey(b"\x67" * 32).verify_key).hex() + "\n")
    run = read_run(path)
    assert all(a.signature.startswith("invalid") for a in run.attestations)
    assert run_attestation_kind(run) is AttestationKind.UNVERIFIED


def test_runs_without_results_keep_the_software_model_notice(tmp_path: Path, dcap_run: Path) -> None:
    """A run without any result is named as such beside a dcap run, and alone keeps the usual notice."""
    path = _copy(CLEAN, tmp_path, "bare")
    for results in (path / ATTESTATION_DIR).glob("*.ear"):
        results.unlink()
    bare = read_run(path)
    assert run_attestation_kind(bare) is AttestationKind.NONE
    assert tee_notice([bare]) == TEE_NOTICE
    assert tee_notice([read_run(dcap_run), bare]) == (
        f"{MIXED_OPENING} Run 1 (clean): {DCAP_ADMISSION}. Run 2 (bare): {UNATTESTED_ADMISSION}."
    )


# -- the built reports ----------------------------------------------------------------------------


def test_simulated_report_states_the_software_model_on_every_page(demo_report: Path) -> None:
    """The report of the recorded (simulated) runs: every banner and the modelling page say software model."""
    _assert_every_page_says(demo_report, TEE_NOTICE)


def test_dcap_report_states_intel_quotes_on_every_page(
    tmp_path: Path, demo: tuple[LoadedSpec, Report], dcap_run: Path
) -> None:
    """The report of a dcap run: every banner and the modelling page say Intel quotes and their limits."""
    index = build_report(demo[0], [dcap_run], tmp_path / "report", report=demo[1])
    _assert_every_page_says(index, DCAP_NOTICE)
    banner = _banners(index)["index.html"]
    for said in ("Intel's root CA", "TCB status", "receipt key", "adversary.tee_compromise", "software model"):
        assert said in banner
    assert "simulated" not in banner
    run_page = " ".join(re.sub(r"<[^>]+>", " ", (index.parent / "run-1.html").read_text()).split())
    assert "The evidence is Intel TDX/SGX quotes" in run_page


def test_mixed_report_says_which_run_used_which(
    tmp_path: Path, demo: tuple[LoadedSpec, Report], dcap_run: Path
) -> None:
    """A simulated run beside a dcap run: the banner names each run with its kind, by page number and name."""
    index = build_report(demo[0], [ATTACKED, dcap_run], tmp_path / "report", report=demo[1])
    expected = f"{MIXED_OPENING} Run 2 (clean): {DCAP_ADMISSION}. Run 1 (attacked): {SIMULATED_ADMISSION}."
    _assert_every_page_says(index, expected)


def test_report_of_a_config_claiming_dcap_keeps_the_software_model(
    tmp_path: Path, demo: tuple[LoadedSpec, Report]
) -> None:
    """Attacker: a simulated run whose summary.json names the dcap kind; the built report claims no Intel quote."""
    path = _copy(CLEAN, tmp_path)
    _set_config(path, attestation_kind="dcap")
    index = build_report(demo[0], [path], tmp_path / "report", report=demo[1])
    _assert_every_page_says(index, TEE_NOTICE)
    text = " ".join(re.sub(r"<[^>]+>", " ", "".join(p.read_text() for p in index.parent.glob("*.html"))).split())
    assert "Intel TDX/SGX quotes," not in text and "The evidence is Intel" not in text
