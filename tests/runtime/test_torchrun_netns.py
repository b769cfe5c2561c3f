"""A run started by two ``torchrun`` agents in two Linux network namespaces joined by a veth pair.

Each namespace stands for a machine with one network interface: the c10d rendezvous, the
process group's store and every gloo connection between the agents cross the veth pair, as
between two hosts, while the run directory stays on the one file system the test reads. Creating
namespaces needs root (``CAP_NET_ADMIN``) and ``ip`` (iproute2); where that fails the test is
skipped with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed_helpers import concatenated_reference, reference, tiny_config
from test_torchrun import AGENT_TIMEOUT, MARKER_ENV, run_agents

from stagewarden.attest.audit import audit_run_dir
from stagewarden.cli import cli
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.launch import prepare_run, torchrun_args

#: Seconds one ``ip`` command may take.
IP_TIMEOUT = 30.0
#: The TCP port of the c10d rendezvous on the first namespace's address (nothing else listens there).
RDZV_PORT = 29400
#: Bytes of one float32 element of an activation or its gradient.
FLOAT32_BYTES = 4


def netns_run_config(**overrides: object) -> RunConfig:
    """The run the two namespaces train: ``S = 3`` GPipe on the tiny model (4 processes, two per
    namespace), with ``overrides`` as :func:`distributed_helpers.tiny_config` takes them; the
    world size must stay even, each agent starting half of it."""
    return tiny_config(**{"stages": 3, **overrides})


def boundary_bytes(config: RunConfig) -> int:
    """The float32 bytes of the activations one stage sends the next over a run (and of the
    gradients sent back): steps x micro-batches x batch x block x width x 4."""
    model = config.model
    return config.steps * config.microbatches * config.batch_size * model.block_size * model.n_embd * FLOAT32_BYTES


@dataclasses.dataclass(frozen=True)
class Host:
    """One namespace standing for a machine: its veth end and that end's address."""

    namespace: str
    interface: str
    address: str

    def rx_bytes(self) -> int:
        """Bytes received so far on the veth end, read from the namespace's own ``/sys``."""
        path = f"/sys/class/net/{self.interface}/statistics/rx_bytes"
        return int(_ip("netns", "exec", self.namespace, "cat", path).stdout)


class NetnsUnavailable(Exception):
    """The namespaces or the veth pair cannot be made here; the message says which command failed."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if result.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.returncode}")
    return result


@contextlib.contextmanager
def netns_pair() -> Iterator[tuple[Host, Host]]:
    """Two new namespaces joined by a veth pair on ``10.213.X.0/24`` (``X`` random), each with
    ``lo`` and its veth end up; both namespaces (and so the veth ends) are deleted on exit,
    whatever happened. Skips the test, saying why, where they cannot be made."""
    if shutil.which("ip") is None:
        pytest.skip("network namespaces need `ip` (iproute2), which is not installed")
    tag = uuid.uuid4().hex[:8]
    subnet = random.randrange(1, 255)
    hosts = tuple(
        Host(f"swt-{tag}-{side}", f"swt{tag}{side}", f"10.213.{subnet}.{i}") for i, side in ((1, "a"), (2, "b"))
    )
    first, second = hosts
    made: list[str] = []
    try:
        try:
            for host in hosts:
                _ip("netns", "add", host.namespace)
                made.append(host.namespace)
            _ip("link", "add", first.interface, "type", "veth", "peer", "name", second.interface)
            for host in hosts:
                _ip("link", "set", host.interface, "netns", host.namespace)
                _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.interface)
                _ip("-n", host.namespace, "link", "set", "lo", "up")
                _ip("-n", host.namespace, "link", "set", host.interface, "up")
        except NetnsUnavailable as exc:
            pytest.skip(f"cannot make two network namespaces joined by a veth pair (needs CAP_NET_ADMIN): {exc}")
        yield first, second
    finally:
        # a namespace's deletion takes its veth end, and so the pair, with it; an end not moved
        # into a namespace yet is deleted from here
        with contextlib.suppress(NetnsUnavailable, subprocess.TimeoutExpired):
            _ip("link", "delete", first.interface)
        for namespace in made:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=IP_TIMEOUT, check=False)


def _agent_env(marker: str, host: Host) -> dict[str, str]:
    # gloo binds (and tells its peers) the address of this interface; by default it would take the
    # address the host name resolves to, which is not in the namespace (often 127.0.0.1)
    return {
        **os.environ,
        MARKER_ENV: marker,
        "GLOO_SOCKET_IFNAME": host.interface,
        "LOGLEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


@dataclasses.dataclass(frozen=True)
class NetnsRun:
    """What the two agents left: the run directory, their exit codes and logs, the hosts, and the
    bytes each veth end received during the run."""

    run_dir: Path
    config: RunConfig
    codes: list[int | None]
    logs: list[str]
    hosts: tuple[Host, Host]
    received: tuple[int, int]


#: The runs the namespaces train: one pipeline, and two data-parallel replicas (with a standby, so
#: that each agent starts half of the 8 processes: replica 0's stages beside the coordinator,
#: replica 1's in the other namespace, whose gradient contributions then cross the veth pair).
NETNS_RUNS = {"pipeline": {}, "replicas": {"replicas": 2, "standby": 1}}


@pytest.fixture(scope="module", params=sorted(NETNS_RUNS))
def netns_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsRun]:
    """The agent of the first namespace hosts the c10d rendezvous and (its address sorting first)
    the first half of the ranks: the coordinator and stage 0 of one pipeline; the second
    namespace's agent the other half."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding the workers of a torchrun agent needs /proc")
    config = netns_run_config(**NETNS_RUNS[request.param])
    if config.world_size % 2:
        raise ValueError(f"two agents of equal size cannot start a world of {config.world_size} processes")
    workdir = tmp_path_factory.mktemp("torchrun-netns")
    prepared = prepare_run(config, workdir / "prepared")
    run_dir = workdir / "run"
    marker = uuid.uuid4().hex
    with netns_pair() as hosts:
        first, second = hosts
        commands = []
        for host in hosts:
            args = torchrun_args(
                prepared,
                run_dir,
                nnodes=2,
                nproc_per_node=config.world_size // 2,
                rdzv_endpoint=f"{first.address}:{RDZV_PORT}",
                rdzv_id=f"stagewarden-{marker[:8]}",
                local_addr=host.address,
            )
            # torchrun guesses which agent hosts the rendezvous store from the host name's
            # addresses, which are not the namespaces': say so explicitly
            entry = args.index("-m")
            args[entry:entry] = [f"--rdzv-conf=is_host={int(host is first)}"]
            commands.append(
                ["ip", "netns", "exec", host.namespace, sys.executable, "-m", "torch.distributed.run", *args]
            )
        before = [h.rx_bytes() for h in hosts]
        codes, logs = run_agents(commands, [_agent_env(marker, h) for h in hosts], workdir, marker)
        received = (first.rx_bytes() - before[0], second.rx_bytes() - before[1])
        yield NetnsRun(run_dir, config, codes, logs, hosts, received)


@pytest.mark.slow
@pytest.mark.timeout(AGENT_TIMEOUT + 120)
def test_agents_in_two_namespaces_complete_the_run_and_audit(netns_run: NetnsRun) -> None:
    """Both agents exit 0; the run completes every step with every worker admitted, its losses and
    final weights are bitwise the single-process reference's, and the audit passes."""
    run = netns_run
    assert run.codes == [0, 0], "\n\n".join(log[-3000:] for log in run.logs)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_completed"] == run.config.steps
    events = [json.loads(line) for line in (run.run_dir / "events.jsonl").read_text().splitlines()]
    admitted = [e["worker"] for e in events if e["event"] == "admitted"]
    if run.config.replicas == 1:
        assert admitted == ["s0r0", "s1r0", "s2r0"]
        losses, weights = reference(run.config)
        assert summary["losses"] == losses
        assert summary["final_weights"]["stages"] == weights
    else:  # the replicas' mean gradient: one process on both shards as one batch, to float32 rounding
        assert admitted == ["s0r0", "s1r0", "s2r0", "s0r1", "s1r1", "s2r1", "standby0"]
        assert summary["losses"] == pytest.approx(concatenated_reference(run.config), rel=2e-5, abs=2e-5)
    report = audit_run_dir(run.run_dir)
    assert report.clean, [f.message for f in report.errors]
    result = CliRunner().invoke(cli, ["audit", str(run.run_dir)])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.timeout(AGENT_TIMEOUT + 120)
def test_the_run_crossed_the_veth_pair(netns_run: NetnsRun) -> None:
    """The first namespace's agent hosts ranks 0 and 1 and the process group's store on its veth
    address; the second's ranks 2 and 3; and each veth end received at least the activations
    (second namespace: stage 0 to stage 1) or the gradients (first namespace: back) of the run."""
    run = netns_run
    assert run.codes == [0, 0]
    first, second = run.hosts
    ranks = [
        sorted(tuple(int(r) for r in m.split(",")) for m in re.findall(r"global_ranks=\[([\d, ]+)\]", log))
        for log in run.logs
    ]
    half = run.config.world_size // 2
    expected = [[tuple(range(half))], [tuple(range(half, 2 * half))]]
    assert ranks == expected, "the agents' rendezvous results are not in their logs"
    addresses = {a for log in run.logs for a in re.findall(r"master_addr=(\S+)", log)}
    assert addresses == {first.address}
    floor = boundary_bytes(run.config)
    assert run.received[1] >= floor, f"{second.interface} received {run.received[1]} bytes, the activations are {floor}"
    assert run.received[0] >= floor, f"{first.interface} received {run.received[0]} bytes, the gradients are {floor}"
