"""A run started by two ``torchrun`` agents on 127.0.0.1 (c10d rendezvous, gloo), and its preparation."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed_helpers import DATA, reference, tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.cli import cli
from stagewarden.runtime.config import load_run_config
from stagewarden.runtime.launch import LaunchError, PreparedRun, free_port, prepare_run, torchrun_args

#: Seconds the two agents get to rendezvous and finish the run.
AGENT_TIMEOUT = 300.0
#: Set in the agents' environment (and so their workers'): finds every process of one test run.
MARKER_ENV = "STAGEWARDEN_TEST_TORCHRUN"


def _marked(marker: str) -> list[int]:
    """The pids of live processes whose environment carries ``MARKER_ENV=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _kill(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)


def _loopback_env(marker: str) -> dict[str, str]:
    env = {**os.environ, MARKER_ENV: marker, "LOGLEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own connections: loopback, not the host name's address
    return env


def _run_agents(prepared: PreparedRun, run_dir: Path, workdir: Path) -> tuple[list[int | None], list[str]]:
    """Start two agents of two processes each; return their exit codes and logs (every process gone)."""
    marker = uuid.uuid4().hex
    args = torchrun_args(
        prepared,
        run_dir,
        nnodes=2,
        nproc_per_node=2,
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        rdzv_id=f"stagewarden-{marker[:8]}",
        local_addr="127.0.0.1",
    )
    command = [sys.executable, "-m", "torch.distributed.run", *args]
    return run_agents([command, command], [_loopback_env(marker)] * 2, workdir, marker)


def run_agents(
    commands: list[list[str]], envs: list[dict[str, str]], workdir: Path, marker: str
) -> tuple[list[int | None], list[str]]:
    """Run one agent per command, with the matching environment, which must carry ``MARKER_ENV=marker``
    (logs: ``workdir/agent<i>.log``), until all exit or :data:`AGENT_TIMEOUT` passes; return their
    exit codes (``None``: still running at the deadline) and logs, with every marked process gone."""
    assert all(env.get(MARKER_ENV) == marker for env in envs), "an agent would escape the clean-up"
    agents: list[subprocess.Popen[bytes]] = []
    logs = [workdir / f"agent{i}.log" for i in range(len(commands))]
    try:
        for command, env, log in zip(commands, envs, logs, strict=True):
            with open(log, "wb") as sink:
                agents.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=workdir,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + AGENT_TIMEOUT
        for agent in agents:
            try:
                agent.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
        return [a.poll() for a in agents], [log.read_text(errors="replace") for log in logs]
    finally:
        # torchrun starts each worker in its own session: find them by the marker, not the group
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGTERM)
        _kill(_marked(marker))
        for agent in agents:
            agent.wait()
        assert _marked(marker) == [], "a process of the run outlived the test"


@pytest.fixture(scope="module")
def two_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[int | None], list[str]]]:
    """S=3 GPipe, 4 processes: two agents with two processes each, prepared by prepare_run."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding the workers of a torchrun agent needs /proc")
    workdir = tmp_path_factory.mktemp("torchrun")
    prepared = prepare_run(tiny_config(stages=3), workdir / "prepared")
    codes, logs = _run_agents(prepared, workdir / "run", workdir)
    yield workdir / "run", codes, logs


@pytest.mark.slow
@pytest.mark.timeout(AGENT_TIMEOUT + 120)
def test_two_agents_complete_the_run(two_agents: tuple[Path, list[int | None], list[str]]) -> None:
    """Both agents exit 0 and the run completes every step with every worker admitted."""
    run_dir, codes, logs = two_agents
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == 2
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["worker"] for e in events if e["event"] == "admitted"] == ["s0r0", "s1r0", "s2r0"]


@pytest.mark.slow
@pytest.mark.timeout(AGENT_TIMEOUT + 120)
def test_two_agents_split_the_ranks_on_loopback(two_agents: tuple[Path, list[int | None], list[str]]) -> None:
    """Each agent hosts two of the four ranks, and the process group's store is on 127.0.0.1."""
    _, codes, logs = two_agents
    assert codes == [0, 0]
    ranks = sorted(
        tuple(int(r) for r in m.split(",")) for log in logs for m in re.findall(r"global_ranks=\[([\d, ]+)\]", log)
    )
    assert ranks == [(0, 1), (2, 3)], "the agents' rendezvous results are not in their logs"
    addresses = {a for log in logs for a in re.findall(r"master_addr=(\S+)", log)}
    assert addresses == {"127.0.0.1"}


@pytest.mark.slow
@pytest.mark.timeout(AGENT_TIMEOUT + 120)
def test_two_agents_equal_the_reference_and_audit(two_agents: tuple[Path, list[int | None], list[str]]) -> None:
    """The losses and final weights are bitwise the single-process reference's; the audit passes."""
    run_dir, codes, _ = two_agents
    assert codes == [0, 0]
    summary = json.loads((run_dir / "summary.json").read_text())
    losses, weights = reference(tiny_config(stages=3))
    assert summary["losses"] == losses
    assert summary["final_weights"]["stages"] == weights
    report = audit_run_dir(run_dir)
    assert report.clean, [f.message for f in report.errors]
    result = CliRunner().invoke(cli, ["audit", str(run_dir)])
    assert result.exit_code == 0, result.output


def test_prepare_run_writes_config_and_identities(tmp_path: Path) -> None:
    """prepare_run writes the configuration and a vendor with a device identity for every worker rank."""
    config = tiny_config(stages=2, standby=1)
    prepared = prepare_run(config, tmp_path / "prep")
    assert load_run_config(prepared.config_path) == config
    assert prepared.vendor_path is not None
    devices = sorted(p.name for p in (prepared.vendor_path / "devices").glob("*.crt"))
    assert devices == ["sim-device-1.crt", "sim-device-2.crt", "sim-device-3.crt"]
    assert prepared.entry_args("out") == [
        "--config",
        str(prepared.config_path),
        "--out",
        "out",
        "--resume",
        "auto",
        "--vendor",
        str(prepared.vendor_path),
    ]


def test_prepare_run_without_attestation_has_no_vendor(tmp_path: Path) -> None:
    """With attestation off no vendor is made and the entry gets no --vendor."""
    prepared = prepare_run(tiny_config(attestation=False), tmp_path / "prep")
    assert prepared.vendor_path is None and not (tmp_path / "prep" / "vendor").exists()
    assert "--vendor" not in prepared.entry_args("out")


def test_prepare_run_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    """A folder that already holds something is refused, and left as it was."""
    (tmp_path / "keep").write_text("x")
    with pytest.raises(LaunchError, match="not an empty folder"):
        prepare_run(tiny_config(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_torchrun_args_must_cover_the_world(tmp_path: Path) -> None:
    """Machines times processes per machine must be the run's world size; the entry arguments come last."""
    prepared = prepare_run(tiny_config(stages=3), tmp_path / "prep")
    with pytest.raises(LaunchError, match="4 processes the run needs"):
        torchrun_args(prepared, "run", nnodes=3, nproc_per_node=1, rdzv_endpoint="h:1", rdzv_id="x")
    args = torchrun_args(prepared, "run", nnodes=2, nproc_per_node=2, rdzv_endpoint="h:1", rdzv_id="x")
    assert args[:5] == ["--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=h:1", "--rdzv-id=x"]
    assert args[args.index("-m") + 1 :] == ["stagewarden.runtime.entry", *prepared.entry_args("run")]


def test_cli_prepare_writes_the_run_and_prints_the_command(tmp_path: Path) -> None:
    """``stagewarden train --prepare DIR`` writes the run, trains nothing, and prints the torchrun line."""
    prep, out = tmp_path / "prep", tmp_path / "run"
    flags = ["--n-layer", "4", "--n-embd", "32", "--block-size", "16", "--batch-size", "4", "--data", DATA]
    result = CliRunner().invoke(cli, ["train", "--prepare", str(prep), "--stages", "3", *flags, "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = load_run_config(prep / "run.json")
    assert config.stages == 3 and config.world_size == 4 and config.model.n_embd == 32
    assert not out.exists()
    assert "N x K = 4 processes" in result.output
    assert f"-m stagewarden.runtime.entry --config {prep / 'run.json'} --out {out}" in result.output
    again = CliRunner().invoke(cli, ["train", "--prepare", str(prep), "--out", str(out)])
    assert again.exit_code == 2 and "not an empty folder" in again.output
