"""The trainers a user would pick instead of stagewarden, on the same job: PyTorch's own pipelining
(``torch.distributed.pipelining``: one :class:`~torch.distributed.pipelining.PipelineStage` per
process, :class:`~torch.distributed.pipelining.Schedule1F1B`, gloo) and one process training the
whole model on the same micro-batches.

Both use stagewarden's own pieces wherever a choice could favour one side: the stages of
:func:`stagewarden.runtime.model.build_stage` (the one-process trainer is the one-stage
partition, the whole model), the micro-batches of :class:`stagewarden.runtime.data.Batches` from
the same corpus and seed, AdamW from :func:`stagewarden.runtime.units.make_optimizer`, and the
workers' numerics (:func:`stagewarden.runtime.units.deterministic` at the run's thread count).
The loss of a micro-batch is scaled by ``1 / M`` in both (PyTorch's schedule divides the
gradients by ``M`` instead, the same update).

Each process is started like ``torchrun`` starts one (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), as ``python benchmarks/overhead_baselines.py JOB_FILE OUT_DIR``.
Step 0 warms up; the timed steps run between two barriers, and every process writes its wall
time and process CPU time over them to ``OUT_DIR/rank-<r>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True)
class Job:
    """One training job, as the baselines and stagewarden run it."""

    stages: int
    n_layer: int
    n_embd: int
    microbatches: int
    batch_size: int
    steps: int
    n_head: int = 4
    block_size: int = 64
    seed: int = 0
    max_bytes: int | None = None

    @property
    def tokens_per_step(self) -> int:
        """Tokens trained on per optimizer step, ``M * B * T``."""
        return self.microbatches * self.batch_size * self.block_size

    def label(self) -> str:
        """A short name: ``S4 L8 C128 B8``."""
        return f"S{self.stages} L{self.n_layer} C{self.n_embd} B{self.batch_size}"

    def run_config(self, **overrides: Any) -> Any:
        """stagewarden's :class:`~stagewarden.runtime.config.RunConfig` of this job (1F1B unless
        ``overrides`` say otherwise)."""
        from stagewarden.runtime.config import RunConfig
        from stagewarden.runtime.model import GPTConfig

        model = GPTConfig(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head, block_size=self.block_size)
        settings: dict[str, Any] = {
            "stages": self.stages,
            "microbatches": self.microbatches,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "schedule": "1f1b",
            "seed": self.seed,
            "max_bytes": self.max_bytes,
        }
        return RunConfig(model=model, **{**settings, **overrides})


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """The timed steps of one baseline run."""

    tokens_per_second: float
    seconds: float
    cpu_seconds_per_step: float
    """Process CPU time of every process over the timed steps, per step."""
    losses: list[float]


def _batches(job: Job) -> Any:
    from stagewarden.runtime.data import Batches, default_corpus

    corpus = default_corpus() if job.max_bytes is None else default_corpus(job.max_bytes)
    return Batches(corpus, job.block_size, job.batch_size, job.microbatches, job.seed)


def _model_config(job: Job) -> Any:
    from stagewarden.runtime.model import GPTConfig

    return GPTConfig(n_layer=job.n_layer, n_embd=job.n_embd, n_head=job.n_head, block_size=job.block_size)


def train_pipelined(job: Job, out: Path) -> None:
    """This process's stage of the PyTorch ``Schedule1F1B`` job (the ``RANK`` environment variable)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    from stagewarden.runtime.model import build_stage, lm_loss
    from stagewarden.runtime.units import TrainConfig, deterministic, make_optimizer

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    train = TrainConfig()
    module = build_stage(_model_config(job), world, rank, job.seed)
    stage = PipelineStage(module, rank, world, torch.device("cpu"))
    schedule = Schedule1F1B(stage, job.microbatches, loss_fn=lm_loss)
    optimizer = make_optimizer(module, train)
    batches = _batches(job)
    losses: list[float] = []

    def step(index: int) -> None:
        pairs = batches.batch(index)
        step_losses: list[torch.Tensor] = []
        if rank == 0:
            schedule.step(torch.cat([x for x, _ in pairs]))  # (M * B, T), split into M micro-batches
        elif rank == world - 1:
            schedule.step(target=torch.cat([y for _, y in pairs]), losses=step_losses, return_outputs=False)
            losses.append(float(torch.stack([loss.detach() for loss in step_losses]).mean()))
        else:
            schedule.step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with deterministic(train.threads):
        step(0)
        dist.barrier()
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(1, job.steps):
            step(index)
        dist.barrier()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _write(out / f"rank-{rank}.json", {"seconds": wall, "cpu_seconds": cpu, "losses": losses})
    dist.destroy_process_group()


def train_one_process(job: Job, out: Path) -> None:
    """The whole model (the one-stage partition) in this process, on the same micro-batches: the
    runtime's own reference trainer (:func:`stagewarden.runtime.reference.reference_step`)."""
    from stagewarden.runtime.model import build_stage
    from stagewarden.runtime.reference import reference_step
    from stagewarden.runtime.units import TrainConfig, deterministic, make_optimizer

    train = TrainConfig()
    module = build_stage(_model_config(job), 1, 0, job.seed)
    optimizer = make_optimizer(module, train)
    batches = _batches(job)
    losses: list[float] = []
    with deterministic(train.threads):
        losses.append(reference_step([module], [optimizer], batches.batch(0)))
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(1, job.steps):
            losses.append(reference_step([module], [optimizer], batches.batch(index)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    _write(out / "rank-0.json", {"seconds": wall, "cpu_seconds": cpu, "losses": losses})


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_baseline(kind: str, job: Job, timeout: float = 900.0) -> BaselineResult:
    """Run the ``pytorch_1f1b`` (``job.stages`` processes) or ``one_process`` baseline of ``job``.

    Raises:
        RuntimeError: A process failed or the run timed out (the message holds its log's tail).
    """
    world = job.stages if kind == "pytorch_1f1b" else 1
    with tempfile.TemporaryDirectory(prefix="stagewarden-baseline-") as tmp:
        folder = Path(tmp)
        (folder / "job.json").write_text(json.dumps({"kind": kind, **dataclasses.asdict(job)}), encoding="utf-8")
        port = str(_free_port())
        procs = []
        for rank in range(world):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
            log = open(folder / f"log-{rank}.txt", "wb")  # noqa: SIM115 (closed below)
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, __file__, str(folder / "job.json"), tmp],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
        deadline = time.monotonic() + timeout
        failed = None
        try:
            for rank, (proc, _) in enumerate(procs):
                code = proc.wait(max(1.0, deadline - time.monotonic()))
                if code != 0 and failed is None:
                    failed = rank
        except subprocess.TimeoutExpired:
            failed = -1
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        if failed is not None:
            rank = max(failed, 0)
            tail = (folder / f"log-{rank}.txt").read_text(encoding="utf-8", errors="replace")[-600:]
            what = "timed out" if failed < 0 else f"rank {rank} failed"
            raise RuntimeError(f"the {kind} baseline of {job.label()} {what}: {tail.strip()}")
        records = [json.loads((folder / f"rank-{r}.json").read_text(encoding="utf-8")) for r in range(world)]
    seconds = max(r["seconds"] for r in records)
    timed = job.steps - 1
    return BaselineResult(
        tokens_per_second=job.tokens_per_step * timed / seconds,
        seconds=seconds,
        cpu_seconds_per_step=sum(r["cpu_seconds"] for r in records) / timed,
        losses=records[-1]["losses"],
    )


def main(argv: list[str]) -> int:
    """The entry of one baseline process: ``JOB_FILE OUT_DIR``."""
    data = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    kind = data.pop("kind")
    job = Job(**data)
    out = Path(argv[1])
    if kind == "pytorch_1f1b":
        train_pipelined(job, out)
    else:
        train_one_process(job, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
