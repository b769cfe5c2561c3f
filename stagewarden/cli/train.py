"""``stagewarden train``: run attested pipeline-parallel training on this machine and write a run directory."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stagewarden.attest.run_record import SUMMARY_FILE, RunDirError, RunRecord
from stagewarden.cli.common import EXIT_OK, EXIT_VIOLATED, BadInput, Choice, make_console, occupied
from stagewarden.cli.spec_settings import load_spec_settings
from stagewarden.cli.train_summary import summary_table
from stagewarden.runtime.defaults import DEFAULT_CHECKPOINT_EVERY, DEFAULT_MAX_RECOMPUTATIONS, MAX_RECOMPUTATIONS_LIMIT

#: Exit code of a run that stopped on a worker fault and can be resumed (``--resume``).
EXIT_RESUMABLE = 75
#: The attack kinds ``--attack`` accepts (written out, so that the command line does not load
#: torch; a test keeps them equal to :class:`stagewarden.runtime.attacks.AttackKind`).
ATTACK_NAMES = (
    "reverse", "random", "scale", "noise", "bitflip", "lazy", "replay", "weights", "optimizer",
    "grad_drift", "swap_weights", "equivocate", "poison_data", "false_accuse", "withhold",
)  # fmt: skip


def _prepare(config: Any, folder: str, vendor: str | None, out: str) -> None:
    """Write a run for torchrun (``--prepare``) and print how to start it."""
    import shlex

    from stagewarden.attest.errors import AttestError
    from stagewarden.runtime.launch import LaunchError, prepare_run

    try:
        prepared = prepare_run(config, folder, vendor_dir=vendor)
    except (LaunchError, AttestError) as exc:
        raise BadInput(f"--prepare: {exc}") from None
    except OSError as exc:
        raise BadInput(f"--prepare: cannot write {folder}: {exc.strerror or exc}") from None
    console = make_console()
    c = config
    console.print(
        f"prepared a run of {c.world_size} processes (1 coordinator + {c.stages} stages + {c.standby} standby)",
        markup=False,
    )
    console.print(f"  configuration  {prepared.config_path}", markup=False)
    if prepared.vendor_path is not None:
        console.print(f"  vendor         {prepared.vendor_path} (SIMULATED; holds private keys)", markup=False)
    command = [
        "torchrun",
        "--nnodes=N",
        "--nproc-per-node=K",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=HOST:PORT",
        "--rdzv-id=ID",
        "--max-restarts=0",
        "-m",
        "stagewarden.runtime.entry",
        *prepared.entry_args(out),
    ]
    console.print(
        f"Copy {folder} to the same path on every machine, then start N x K = {c.world_size} processes, "
        "K on each of N machines:",
        markup=False,
    )
    console.print(f"  {shlex.join(command)}", markup=False)
    if c.attestation:
        console.print(
            "The coordinator (rank 0) starts the attestation verifier on its machine, its key in the default "
            "per-user folder there; or run 'stagewarden verifier serve' apart and add --verifier SOCKET.",
            markup=False,
        )


@click.command()
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(),
    help="Take stages, micro-batches, standby, receipts, attestation, the verification, the response and the "
    "checkpoint interval from this spec; flags override.",
)
@click.option(
    "--example",
    metavar="NAME",
    help="Take the settings from this packaged example spec instead of --spec (see `stagewarden examples list`).",
)
@click.option("--stages", type=int, help="Pipeline stages S (one worker process each).  [default: 2]")
@click.option(
    "--replicas",
    type=int,
    help="Data-parallel replicas R: whole pipelines on their own data shards, whose workers of a stage "
    "aggregate their gradients before every update.  [default: 1]",
)
@click.option(
    "--aggregation",
    type=Choice(["mean", "median", "trimmed_mean", "krum"]),
    help="How the replicas of a stage combine their gradients: the mean, or a robust rule.  [default: mean]",
)
@click.option("--microbatches", type=int, help="Micro-batches per step M.  [default: 4]")
@click.option("--steps", type=int, default=10, show_default=True, help="Optimizer steps.")
@click.option(
    "--schedule", type=Choice(["gpipe", "1f1b"]), default="1f1b", show_default=True, help="Pipeline schedule."
)
@click.option("--no-receipts", is_flag=True, help="Do not sign or log receipts (the run cannot be audited).")
@click.option("--no-attestation", is_flag=True, help="Admit workers without attestation (the run cannot be audited).")
@click.option(
    "--attestation-kind",
    type=Choice(["simulated", "dcap"]),
    default="simulated",
    show_default=True,
    help="Evidence the workers attest with: the simulated TEE, or Intel TDX/SGX quotes from configfs-tsm (dcap).",
)
@click.option(
    "--dcap-collateral",
    type=click.Path(exists=True),
    help="With --attestation-kind dcap: the collateral bundle file or cache folder (see attest fetch-collateral).",
)
@click.option(
    "--dcap-policy",
    type=click.Path(exists=True, dir_okay=False),
    help="With --attestation-kind dcap: the DCAP policy file (TCB statuses, reference values per stage).",
)
@click.option("--standby", type=int, help="Standby workers K that attest and wait idle.  [default: 0]")
@click.option(
    "--backend",
    type=Choice(["gloo", "nccl"]),
    default="gloo",
    show_default=True,
    help="torch.distributed backend.",
)
@click.option(
    "--device", type=Choice(["cpu", "cuda"]), default="cpu", show_default=True, help="Where the stages compute."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Run seed (initial weights and data order).")
@click.option(
    "--data",
    "data",
    multiple=True,
    type=click.Path(),
    help="Corpus file or folder (repeatable); default: the Python standard library.",
)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Sequences per micro-batch B.")
@click.option("--block-size", type=int, default=64, show_default=True, help="Context length T.")
@click.option("--n-layer", type=int, default=4, show_default=True, help="Transformer blocks.")
@click.option("--n-embd", type=int, default=64, show_default=True, help="Model width C.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option(
    "--vendor", "vendor", type=click.Path(), help="Reuse this simulated vendor folder instead of a throw-away one."
)
@click.option(
    "--attack",
    "attack_kind",
    type=Choice(ATTACK_NAMES),
    metavar="KIND",
    help=f"Mount this attack ({', '.join(ATTACK_NAMES)}) from the --malicious stages.",
)
@click.option("--malicious", help="Comma-separated malicious stages for --attack, such as 1 or 1,2.")
@click.option(
    "--attack-rate", default="1.0", show_default=True, help="Probability in (0, 1] that the attack fires on a unit."
)
@click.option("--attack-start", default="0", show_default=True, help="First step at which the attack may fire.")
@click.option(
    "--attack-direction",
    type=Choice(["forward", "backward"]),
    default="forward",
    show_default=True,
    help="Tensor attacks and equivocate: tamper with activations (forward) or gradients (backward).",
)
@click.option(
    "--attack-per",
    type=Choice(["unit", "step"]),
    default="unit",
    show_default=True,
    help="What one draw of --attack-rate decides: each unit on its own, or every unit of a step computation "
    "at once (the paper's per-iteration rate).",
)
@click.option(
    "--verification",
    type=Choice(["none", "spot_check", "redundant_neighbour", "replicate"]),
    help="Verify units: spot_check re-executes a committed random sample on the coordinator; "
    "redundant_neighbour has stage s+1 recompute every unit of stage s (the paper's defence); replicate has "
    "k copies of every pipeline compute every unit and compares them.  [default: none]",
)
@click.option(
    "--replicate-factor",
    type=int,
    help="With replicate: the copies k (at least 2) that compute every unit.  [default: 3]",
)
@click.option(
    "--replicate-resolve",
    type=Choice(["majority", "referee"]),
    help="With replicate: who decides whom a disagreement blames, the copies' majority (a tie blames every copy "
    "in it) or the coordinator re-executing the unit (referee).  [default: majority]",
)
@click.option(
    "--attack-pipelines",
    default="0",
    show_default=True,
    help="With --attack: the comma-separated pipelines whose --malicious stages attack (pipeline p is replica "
    "p // k, its copy p % k under replicate).",
)
@click.option(
    "--input-via",
    type=Choice(["coordinator", "upstream", "checked_worker"]),
    help="With redundant_neighbour: who sends the checker the checked stage's input.  [default: coordinator]",
)
@click.option(
    "--spot-check-rate", type=float, help="Probability p in (0, 1] that each unit is spot-checked.  [default: 0.1]"
)
@click.option(
    "--spot-check-compare",
    type=Choice(["bitwise", "tolerance"]),
    help="With spot_check: compare a re-executed unit bitwise (identical hardware and deterministic "
    "algorithms) or within a tolerance calibrated per stage at admission from each worker's honest "
    "executions (other hardware or kernels; a worker needing more than 1e-3 is refused).  [default: bitwise]",
)
@click.option(
    "--response",
    type=Choice(["eject", "rollback", "restart", "skip_stage"]),
    help="On a detection: hand the convict's stage to a standby and resume from the last verified "
    "checkpoint (eject; skip_stage without a free standby), return every stage to the last verified "
    "checkpoint before the convict's first tampered step, audit its receipts and replace it by a standby "
    "or bypass it (rollback), recompute the step (restart) or recompute it "
    "with the convict's stage bypassed, the stage before it sending straight to the stage after it, "
    "and its update frozen (skip_stage; restart on the first and last stage).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    help="Write a verified checkpoint every N steps (0: none; a crash then loses the run).  "
    f"[default: {DEFAULT_CHECKPOINT_EVERY}]",
)
@click.option(
    "--keep-checkpoints",
    type=click.IntRange(min=0),
    help="Keep the N newest verified checkpoints on disk, and step 0's (0: keep all).  [default: 2]",
)
@click.option(
    "--result-lifetime",
    type=click.IntRange(min=2, max=7 * 86400),
    help="Seconds a simulated attestation result stays valid; every worker is re-attested when half of it has "
    "passed, and a worker refused then is replaced like a failed one.  [default: 3600]",
)
@click.option(
    "--max-recomputations",
    type=click.IntRange(min=0, max=MAX_RECOMPUTATIONS_LIMIT),
    help="Recompute (or roll back to) one step at most N times after detections before the run stops; raise "
    "it for --response restart against an attack that fires on some computations.  "
    f"[default: {DEFAULT_MAX_RECOMPUTATIONS}]",
)
@click.option(
    "--no-overlap-checks",
    is_flag=True,
    help="Settle each step's spot checks and checkpoint before the next step starts, instead of while it "
    "computes (a failed check then discards the step computed meanwhile).",
)
@click.option(
    "--heartbeat-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds without a worker's heartbeat before it is declared unresponsive.  [default: 10]",
)
@click.option(
    "--silence-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a worker may keep a peer waiting while it waits on nobody (withholding).  [default: 60]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds any single receive may take, and to start every process.  [default: 300]",
)
@click.option("--out", type=click.Path(), help="The run directory to write (required unless --resume).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(),
    help="Continue the interrupted run in this directory from its newest verified checkpoint, with its own "
    "configuration (only --steps and the timeouts may be given).",
)
@click.option(
    "--verifier",
    "verifier_socket",
    type=click.Path(),
    help="Use the attestation verifier listening on this Unix socket ('stagewarden verifier serve') instead "
    "of starting one for the run.",
)
@click.option(
    "--verifier-dir",
    type=click.Path(file_okay=False),
    help="The key folder of the verifier started for the run (mode 0700; given to that verifier alone).  "
    "[default: ~/.local/state/stagewarden/verifier, see 'stagewarden verifier serve --help']",
)
@click.option(
    "--prepare",
    "prepare_dir",
    type=click.Path(),
    help="Do not train: write the configuration and a simulated vendor holding every rank's device identity "
    "to this folder, to copy to every machine of a torchrun launch; print the command to run there.",
)
def train(
    spec_path: str | None,
    example: str | None,
    stages: int | None,
    replicas: int | None,
    aggregation: str | None,
    microbatches: int | None,
    steps: int,
    schedule: str,
    no_receipts: bool,
    no_attestation: bool,
    attestation_kind: str,
    dcap_collateral: str | None,
    dcap_policy: str | None,
    standby: int | None,
    backend: str,
    device: str,
    seed: int,
    data: tuple[str, ...],
    batch_size: int,
    block_size: int,
    n_layer: int,
    n_embd: int,
    lr: float,
    vendor: str | None,
    attack_kind: str | None,
    malicious: str | None,
    attack_rate: str,
    attack_start: str,
    attack_direction: str,
    attack_per: str,
    verification: str | None,
    replicate_factor: int | None,
    replicate_resolve: str | None,
    attack_pipelines: str,
    input_via: str | None,
    spot_check_rate: float | None,
    spot_check_compare: str | None,
    response: str | None,
    checkpoint_every: int | None,
    keep_checkpoints: int | None,
    result_lifetime: int | None,
    max_recomputations: int | None,
    no_overlap_checks: bool,
    heartbeat_timeout: float | None,
    silence_timeout: float | None,
    timeout: float | None,
    out: str | None,
    force: bool,
    resume_dir: str | None,
    verifier_socket: str | None,
    verifier_dir: str | None,
    prepare_dir: str | None,
) -> None:
    """Train a small GPT split into pipeline stages, one process per stage, with attested workers
    and signed receipts; write summary.json, metrics.csv, events.jsonl, receipts.log and attestation/
    to --out. Check the result later with 'stagewarden audit OUT'.

    A worker that dies, stops answering, withholds a transfer or sends a malformed message is
    replaced by a standby from the newest verified checkpoint; without a standby the run stops
    and 'stagewarden train --resume OUT' continues it.

    Exit codes: 0 the run completed with no detection, 1 the run failed or detected tampering,
    2 bad input, 75 the run stopped on a worker fault and can be resumed.
    """
    from stagewarden.runtime.config import ConfigError, RunConfig
    from stagewarden.runtime.model import GPTConfig
    from stagewarden.runtime.units import TrainConfig

    given = {"heartbeat_timeout": heartbeat_timeout, "silence_timeout": silence_timeout, "timeout": timeout}
    timeouts: dict[str, float] = {k: v for k, v in given.items() if v is not None}
    if resume_dir is not None:
        config = _resume_config(resume_dir, out, timeouts)
        _launch(config, Path(resume_dir), vendor, resume=True, verifier=(verifier_socket, verifier_dir))
        return
    if out is None:
        raise BadInput("give --out RUN_DIR (the run directory to write), or --resume RUN_DIR")

    settings: dict[str, Any] = load_spec_settings(spec_path, example) if spec_path or example else {}
    for name, value in (
        ("stages", stages),
        ("microbatches", microbatches),
        ("standby", standby),
        ("replicas", replicas),
    ):
        if value is not None:
            settings[name] = value
    chosen: dict[str, Any] = {
        "verification": verification,
        "aggregation": aggregation,
        "replicate_factor": replicate_factor,
        "replicate_resolve": replicate_resolve,
        "input_via": input_via,
        "spot_check_rate": spot_check_rate,
        "spot_check_compare": spot_check_compare,
        "response": response,
        "checkpoint_every": checkpoint_every,
        "keep_checkpoints": keep_checkpoints,
        "max_recomputations": max_recomputations,
        "result_lifetime": result_lifetime,
        **timeouts,
    }
    settings.update({k: v for k, v in chosen.items() if v is not None})
    if (attack_kind is None) != (malicious is None):
        raise BadInput("--attack and --malicious go together: name the attack and the stages that mount it")
    if attack_kind is not None:
        from stagewarden.runtime.attacks import AttackPlan

        try:
            settings["attack"] = AttackPlan.from_cli(
                attack_kind,
                malicious or "",
                attack_rate,
                attack_start,
                direction=attack_direction,
                per=attack_per,
                pipelines=attack_pipelines,
            ).to_json()
        except ValueError as exc:
            raise BadInput(f"--attack: {exc}") from None
    if no_receipts:
        settings["receipts"] = False
    if no_attestation:
        settings["attestation"] = False
    if no_overlap_checks:
        settings["overlap_checks"] = False
    for path in data:
        if not Path(path).exists():
            raise BadInput(f"--data {path} does not exist")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BadInput("--device cuda: CUDA is not available on this machine")
    try:
        n_head = 4 if n_embd % 4 == 0 else 1
        model = GPTConfig(block_size=block_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head)
        config = RunConfig(
            steps=steps,
            schedule=schedule,
            model=model,
            train=dataclasses.replace(TrainConfig(), lr=lr),
            batch_size=batch_size,
            seed=seed,
            data=tuple(str(Path(p).resolve()) for p in data),
            backend=backend,
            device=device,
            attestation_kind=attestation_kind,
            dcap_collateral=str(Path(dcap_collateral).resolve()) if dcap_collateral else None,
            dcap_policy=str(Path(dcap_policy).resolve()) if dcap_policy else None,
            **settings,
        )
    except (ConfigError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    if prepare_dir is not None:
        _prepare(config, prepare_dir, vendor, out)
        return
    target = Path(out)
    if target.exists() and not target.is_dir() and not force:
        raise BadInput(f"--out {out} is a file, not a run directory; pass --force to replace it")
    if occupied(target):
        if not force:
            raise BadInput(f"--out {out} exists and is not empty; pass --force to replace it")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    _launch(config, target, vendor, resume=False, verifier=(verifier_socket, verifier_dir))


def _resume_config(resume_dir: str, out: str | None, timeouts: dict[str, float]) -> Any:
    """The configuration of the run to resume, from its own summary.json; only ``--steps`` and the
    timeouts given on the command line change it."""
    from click.core import ParameterSource

    from stagewarden.runtime.config import ConfigError, RunConfig

    ctx = click.get_current_context()
    allowed = {"resume_dir", "steps", "heartbeat_timeout", "silence_timeout", "timeout", "vendor", "out"}
    allowed |= {"verifier_socket", "verifier_dir"}
    given = [
        name
        for name in ctx.params
        if name not in allowed and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise BadInput(f"--resume continues the run with its own configuration; {flags} cannot be given with it")
    if out is not None and Path(out).resolve() != Path(resume_dir).resolve():
        raise BadInput(f"--out {out} differs from --resume {resume_dir}: a resumed run stays in its own directory")
    folder = Path(resume_dir)
    if not folder.is_dir():
        raise BadInput(f"--resume {resume_dir}: no such run directory")
    summary_path = folder / SUMMARY_FILE
    if not summary_path.exists() and not summary_path.is_symlink():
        raise BadInput(f"--resume {resume_dir}: no summary.json (not a run directory)")
    try:
        training = RunRecord.from_json(summary_path).require_training()
    except RunDirError as exc:
        raise BadInput(f"--resume {resume_dir}: {exc.message}") from None
    data = training.config
    if training.status == "completed":
        raise BadInput(f"--resume {resume_dir}: the run completed all its steps; there is nothing to resume")
    try:
        config = RunConfig.from_json(data)
        changes: dict[str, Any] = dict(timeouts)
        if ctx.get_parameter_source("steps") is ParameterSource.COMMANDLINE:
            changes["steps"] = ctx.params["steps"]
        return dataclasses.replace(config, **changes)
    except (ConfigError, ValueError) as exc:
        raise BadInput(f"--resume {resume_dir}: {exc}") from None


def _launch(
    config: Any, target: Path, vendor: str | None, resume: bool, verifier: tuple[str | None, str | None]
) -> None:
    """Run (or resume) ``config`` in ``target`` with a progress bar; print the summary table and exit.
    ``verifier``: the socket of a verifier service to use and the key folder of one to start."""
    from stagewarden.runtime.config import ConfigError
    from stagewarden.runtime.launch import LaunchError, LaunchInterrupted, launch_local

    console = make_console()
    progress = Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("train", total=config.steps, status="starting the workers")

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "admitted":
            progress.update(task, status=f"admitted {event.get('worker')}")
        elif kind == "refused":
            progress.update(task, status=f"[red]refused {event.get('worker')}[/]")
        elif kind == "worker_fault":
            progress.update(task, status=f"[red]worker {event.get('worker')} failed ({event.get('cause')})[/]")
        elif kind == "run_resumed":
            progress.update(
                task, completed=int(event.get("from_step", 0)), status=f"resumed at step {event.get('from_step')}"
            )
        elif kind == "step":
            progress.update(
                task,
                completed=int(event["step"]) + 1,
                status=f"step {event['step']}  loss {event['loss']:.4f}  {event['tokens_per_second']:.0f} tok/s",
            )

    try:
        with progress:
            result = launch_local(
                config,
                target,
                vendor_dir=vendor,
                on_event=on_event,
                resume=resume,
                verifier=verifier[0],
                verifier_dir=verifier[1],
            )
    except LaunchInterrupted as exc:
        make_console(err=True).print(f"the run was {exc}", markup=False)
        if exc.resumable:
            make_console(err=True).print(
                f"the run directory is resumable: stagewarden train --resume {target}", markup=False
            )
        raise KeyboardInterrupt from None  # exit 130
    except LaunchError as exc:
        err = make_console(err=True)
        err.print(f"[bold red]run failed:[/] {escape(str(exc))}", markup=True)
        if exc.resumable:
            err.print(f"the run directory is resumable: stagewarden train --resume {target}", markup=False)
            sys.exit(EXIT_RESUMABLE)
        sys.exit(EXIT_VIOLATED)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    record = result.record
    try:
        run = record.require_training()
    except RunDirError as exc:
        raise BadInput(f"{target}: {exc.message}") from None
    console.print(summary_table(config, record, run, target))
    sys.exit(EXIT_VIOLATED if run.detections or run.status != "completed" else EXIT_OK)
