"""``stagewarden replay``: mount a prover counterexample as a live attack, then against a proposed defence."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from stagewarden.attest.rundir import RunDir
from stagewarden.cli.common import EXIT_OK, EXIT_VIOLATED, BadInput, make_console, occupied
from stagewarden.cli.spec_input import load_spec_or_example, print_warnings_to_stderr

#: The checks the runtime can run, as ``(scheme, verifier)``; others in a proposed defence are refused.
RUNNABLE_CHECKS = {("spot_check", "coordinator"), ("redundant_neighbour", None), ("replicate", None)}
#: Schemes that change how the run aggregates, not what it checks: they run with any of the above.
AGGREGATION_SCHEMES = {"robust_aggregation"}


def _runnable(loaded: Any) -> str | None:
    """Why the runtime cannot run this spec's defence, or ``None``."""
    defense = loaded.spec.defense
    for check in defense.checks:
        if check.scheme in AGGREGATION_SCHEMES:
            continue
        key = (check.scheme, getattr(check, "verifier", None))
        if key not in RUNNABLE_CHECKS:
            return f"the check {check.scheme} ({key[1] or 'any'} verifier) is not in the runtime"
    if getattr(defense, "data_commitment", False):
        return "data commitments are not in the runtime"
    return None


def _run(config: Any, folder: Path, label: str, console: Any) -> None:
    from stagewarden.runtime.launch import LaunchError, LaunchInterrupted, launch_local

    with console.status(f"{label}: training {config.stages} stages for {config.steps} steps") as status:

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "step":
                status.update(f"{label}: step {event['step']} of {config.steps}")
            elif event.get("event") == "detection":
                status.update(f"{label}: detection at step {event.get('step')} blaming {event.get('worker')}")

        try:
            launch_local(config, folder, on_event=on_event)
        except LaunchError as exc:
            if isinstance(exc, LaunchInterrupted):  # launch_local stops the run on Ctrl-C
                raise KeyboardInterrupt from None
            make_console(err=True).print(f"[bold red]{label} run failed:[/] {escape(str(exc))}", markup=True)
            sys.exit(EXIT_VIOLATED)


@click.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--example", metavar="NAME", help="Use a packaged example spec instead of a file.")
@click.option("--guarantee", "guarantee_id", required=True, help="The id of the violated guarantee to replay.")
@click.option("--steps", type=click.IntRange(2, 1000), default=3, show_default=True, help="Steps of each run.")
@click.option(
    "--no-defence",
    "no_defence",
    is_flag=True,
    help="Replay the attack under the spec's defence only; skip the run under the proposed defence.",
)
@click.option("--timeout", type=float, default=None, help="Solver time limit per query, in seconds.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The folder for the runs and replay.json.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def replay(
    spec: str | None,
    example: str | None,
    guarantee_id: str,
    steps: int,
    no_defence: bool,
    timeout: float | None,
    out: str,
    force: bool,
) -> None:
    """Replay the counterexample of a violated guarantee of SPEC as a real multi-process attack.

    Maps the prover's trace onto a run (the spec's stages and defence, the trace's malicious
    workers and their actions as an attack from step 1) and runs it into OUT/attack; says
    whether the run shows what the trace predicts. Then asks `stagewarden synthesize` for a
    defence under which the guarantee holds and replays the same attack against it into
    OUT/defended, which must catch it. Writes OUT/replay.json.

    Exit codes: 0 the run shows the predicted attack (and the proposed defence catches it), 1 it
    does not (or a run failed), 2 bad input (spec, guarantee, --out) or a trace or defence the
    runtime cannot mount.
    """
    loaded = load_spec_or_example(spec, example)
    print_warnings_to_stderr(loaded)
    target = Path(out)
    if occupied(target) and not force:
        raise BadInput(f"--out {out} exists and is not empty; pass --force to replace it")
    # The runs and replay.json are written into a hidden sibling of --out that replaces it at the
    # end: a failed or interrupted replay leaves --out as it was (an earlier replay too).
    parent = target.absolute().parent
    made = next((f for f in reversed(target.absolute().parents) if not f.exists()), None)  # first folder to make
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
        (work / "out").mkdir()  # (mkdtemp's own mode is 0700)
    except OSError as exc:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise BadInput(f"--out {out}: cannot create it: {exc.strerror or exc}") from None
    try:
        _replay(loaded, guarantee_id, steps, no_defence, timeout, work / "out", target)
    finally:  # on success work/out is --out by now; otherwise remove it, and any folder made for it
        shutil.rmtree(work, ignore_errors=True)
        if made is not None and not target.exists():
            shutil.rmtree(made, ignore_errors=True)


def _capability_removed(attacked: Any, settings: dict[str, Any]) -> str | None:
    """Why the replayed attack cannot be mounted under the defence ``settings`` at all (the
    defence removes what it needs, such as checking workers to accuse with), or ``None``."""
    from stagewarden.runtime.config import ConfigError

    try:
        dataclasses.replace(attacked, **settings)
    except ConfigError as exc:
        dataclasses.replace(attacked, attack=None, **settings)  # a defence that cannot run at all raises here
        return str(exc)
    return None


def _replay(
    loaded: Any, guarantee_id: str, steps: int, no_defence: bool, timeout: float | None, staging: Path, target: Path
) -> None:
    """The replay into ``staging``, moved to ``target`` when it is complete; exits with its exit code."""
    from stagewarden.attest.files import atomic_write_text, publish_dir
    from stagewarden.replay import ReplayError, observe, plan_replay, propose_defence
    from stagewarden.runtime.config import ConfigError
    from stagewarden.spec_settings import spec_settings

    console = make_console()
    try:
        with console.status(f"proving {loaded.file}"):
            plan = plan_replay(loaded, guarantee_id, steps)
    except ReplayError as exc:
        raise BadInput(str(exc)) from None
    console.print(f"[bold]replaying[/] {escape(guarantee_id)} ({plan.kind}) of {escape(loaded.file)}", markup=True)
    console.print(f"  trace: {escape(plan.description)}", markup=True)
    for note in plan.mapping:
        console.print(f"  mapped: {escape(note)}", markup=True)
    console.print(f"  the trace predicts: {escape(plan.prediction)}", markup=True)
    _run(plan.config, staging / "attack", "attack under the spec's defence", console)
    seen = observe(plan.kind, staging / "attack", expect_attack=True)
    mark = "[green]shows it[/]" if seen.shows else "[red]does not show it[/]"
    console.print(f"  the run {mark}: {escape(seen.detail)}", markup=True)
    payload: dict[str, Any] = {
        "format": "stagewarden.replay",
        "version": 1,
        "spec": loaded.file,
        "guarantee": guarantee_id,
        "kind": plan.kind,
        "trace": plan.description,
        "prediction": plan.prediction,
        "mapping": list(plan.mapping),
        "attack": {"run": "attack", "shows_prediction": seen.shows, **dataclasses.asdict(seen)},
        "defended": None,
    }
    caught = True
    if not no_defence:
        try:
            with console.status("asking synthesize for a defence under which the guarantee holds"):
                proposed, block, scope = propose_defence(loaded, guarantee_id, timeout)
            why = _runnable(proposed)
            if why is not None:
                raise ReplayError(f"the proposed defence cannot be run: {why}")
            settings = {"verification": "none", **spec_settings(proposed)}
            settings["microbatches"] = plan.config.microbatches
            removed = _capability_removed(plan.config, settings)
            config = dataclasses.replace(plan.config, **settings) if removed is None else None
        except (ReplayError, ConfigError) as exc:
            # The attack run is complete: keep it, with a replay.json that has no defended run.
            atomic_write_text(staging / "replay.json", json.dumps(payload, indent=2) + "\n")
            publish_dir(staging, target)
            raise BadInput(str(exc)) from None
        console.print(f"[bold]proposed defence[/] (synthesize, for {escape(scope)}):", markup=True)
        console.print(escape(block.rstrip()), markup=True)
        if config is None:  # the attack needs something the defence does away with
            console.print(
                f"  [green]the proposed defence removes the capability[/]: {escape(str(removed))}", markup=True
            )
            payload["defended"] = {
                "run": None,
                "defence": block,
                "searched_for": scope,
                "caught": True,
                "removed": removed,
            }
            atomic_write_text(staging / "replay.json", json.dumps(payload, indent=2) + "\n")
            publish_dir(staging, target)
            console.print(f"runs and replay.json in {escape(str(target))}", markup=True)
            sys.exit(EXIT_OK if seen.shows else EXIT_VIOLATED)
        _run(config, staging / "defended", "the same attack under the proposed defence", console)
        guarantee = next(g for g in loaded.spec.guarantees if g.id == guarantee_id)
        bound = getattr(guarantee, "max_undetected", None)
        defended = observe(plan.kind, staging / "defended", expect_attack=False, max_undetected=bound)
        status = RunDir(staging / "defended").summary.require_training().status
        caught = defended.shows and status == "completed"
        if status == "stopped":  # it gave up training: that is no defence that stops the attack
            mark = "[red]stopped the run[/]"
        else:
            mark = "[green]stops the attack[/]" if caught else "[red]does not stop the attack[/]"
        console.print(f"  the proposed defence {mark}: {escape(defended.detail)}", markup=True)
        payload["defended"] = {
            "run": "defended",
            "defence": block,
            "searched_for": scope,
            "caught": caught,
            **dataclasses.asdict(defended),
        }
    atomic_write_text(staging / "replay.json", json.dumps(payload, indent=2) + "\n")
    publish_dir(staging, target)
    console.print(f"runs and replay.json in {escape(str(target))}", markup=True)
    sys.exit(EXIT_OK if seen.shows and caught else EXIT_VIOLATED)
