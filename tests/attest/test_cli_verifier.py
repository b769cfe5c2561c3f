"""``stagewarden verifier``: the public key an auditor pins, and a verifier served as a separate
party (``verifier serve``) that a run reaches with ``--verifier SOCKET``: the run completes under
its key and audits clean with it pinned; bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.verifier_client import VerifierClient
from stagewarden.cli import cli

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from distributed_helpers import tiny_config  # noqa: E402


def test_public_key_is_created_once_and_printed(tmp_path: Path) -> None:
    """``public-key`` creates the key folder on first use and prints the same key every time."""
    folder = tmp_path / "verifier"
    first = CliRunner().invoke(cli, ["verifier", "public-key", "--verifier-dir", str(folder)])
    assert first.exit_code == 0, first.output
    key = first.output.strip()
    assert len(bytes.fromhex(key)) == 32
    again = CliRunner().invoke(cli, ["verifier", "public-key", "--verifier-dir", str(folder), "--format", "json"])
    assert json.loads(again.output) == {"verifier_dir": str(folder), "public_key": key}


def test_public_key_of_a_folder_open_to_others_is_bad_input(tmp_path: Path) -> None:
    """A key folder with group bits: exit 2, one line that says how to fix it."""
    folder = tmp_path / "verifier"
    folder.mkdir()
    os.chmod(folder, 0o770)
    result = CliRunner().invoke(cli, ["verifier", "public-key", "--verifier-dir", str(folder)])
    assert result.exit_code == 2
    assert "chmod 700" in result.output and "Traceback" not in result.output


def test_serve_with_a_bad_configuration_is_bad_input(tmp_path: Path) -> None:
    """``serve`` with a configuration that is not one: exit 2 and one line, nothing listening."""
    (tmp_path / "run.json").write_text("{not json")
    socket_path = tmp_path / "v.sock"
    args = ["verifier", "serve", "--config", str(tmp_path / "run.json"), "--socket", str(socket_path)]
    result = CliRunner().invoke(cli, [*args, "--verifier-dir", str(tmp_path / "keys")])
    assert result.exit_code == 2, result.output
    assert "cannot read the run configuration" in result.output and not socket_path.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="a Unix socket and signals")
def test_a_run_uses_a_verifier_served_apart(tmp_path: Path) -> None:
    """``verifier serve`` started apart from the run (for ``train --prepare``'s configuration): a
    run given its socket completes, the run publishes the served key, and the audit with it pinned
    is clean; SIGTERM stops the verifier (exit 0) and removes its socket."""
    from stagewarden.runtime.launch import launch_local, prepare_run

    config = tiny_config(steps=2)
    prepared = prepare_run(config, tmp_path / "prepared")
    assert prepared.vendor_path is not None
    keys = tmp_path / "verifier-keys"
    socket_dir = Path(tempfile.mkdtemp(prefix="sw-serve-"))  # short: a socket path holds 108 bytes
    socket_path = socket_dir / "v.sock"
    command = [sys.executable, "-m", "stagewarden.cli", "verifier", "serve", "--config", str(prepared.config_path)]
    command += ["--vendor", str(prepared.vendor_path), "--socket", str(socket_path), "--verifier-dir", str(keys)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        gone = lambda: None if server.poll() is None else f"exited with {server.returncode}"  # noqa: E731
        client = VerifierClient(socket_path, connect_seconds=120, alive=gone)
        served = bytes(client.public_key())
        printed = CliRunner().invoke(cli, ["verifier", "public-key", "--verifier-dir", str(keys)]).output.strip()
        assert served.hex() == printed
        run = tmp_path / "run"
        result = launch_local(config, run, vendor_dir=prepared.vendor_path, verifier=socket_path)
        assert result.summary["status"] == "completed"
        assert (run / "attestation" / "verifier.pub").read_text().strip() == printed
        coordinator = bytes.fromhex((run / "coordinator.pub").read_text().strip())
        report = audit_run_dir(run, served, coordinator_key=coordinator)
        assert report.clean, [(f.code, f.message) for f in report.errors]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, err
    assert f"listening on {socket_path}" in err and "verifier stopped" in err
    deadline = time.monotonic() + 5
    while socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not socket_path.exists()


def test_prepare_says_where_the_verifier_runs(tmp_path: Path) -> None:
    """``train --prepare`` tells the operator that rank 0 starts the verifier, and how to run it apart."""
    result = CliRunner().invoke(cli, ["train", "--prepare", str(tmp_path / "prepared"), "--out", "run"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "rank 0) starts the attestation verifier" in text and "--verifier SOCKET" in text


def test_demo_runs_sign_under_the_given_verifier_folder(tmp_path: Path) -> None:
    """``demo --verifier-dir``: both runs publish the key of that folder, which holds the only copy
    of the private key."""
    keys = tmp_path / "keys"
    result = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(tmp_path / "demo"), "--verifier-dir", str(keys)])
    assert result.exit_code == 0, result.output
    published = {
        (tmp_path / "demo" / run / "attestation" / "verifier.pub").read_text() for run in ("clean", "attacked")
    }
    assert published == {(keys / "verifier.pub").read_text()}
    seed = (keys / "verifier.key").read_text().strip()
    assert not [p for p in (tmp_path / "demo").rglob("*") if p.is_file() and seed.encode() in p.read_bytes()]
