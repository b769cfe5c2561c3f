"""``stagewarden demo``: prove the packaged demo protocol, then put it to the test on this machine.

The demo verifies the packaged ``demo`` spec, trains a small model twice under the spec's
defence (a clean run and one in which stage 1 tampers with every activation it sends from step
2 on), audits the clean run, sets what the prover predicted beside what the runs observed, and
builds the security report of the spec and both runs. Whatever the runtime cannot do yet is left
out and said so; no figure is made up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from stagewarden.attest.run_record import SUMMARY_FILE, RunDirError, RunRecord, TrainingRecord
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.cli.common import EXIT_OK, EXIT_VIOLATED, BadInput, format_option, make_console, occupied
from stagewarden.cli.proving import prove_with_status

#: The attacker's stage, the attack and its first step in the attacked run.
ATTACK_STAGE = 1
ATTACK_KIND = "reverse"
ATTACK_START = 2


@dataclasses.dataclass(frozen=True)
class DemoSize:
    """The model and run length of the demo's two training runs."""

    steps: int
    n_layer: int = 4
    n_embd: int = 32
    block_size: int = 32
    batch_size: int = 4
    max_bytes: int = 256 * 1024


#: 80 steps: the attacker tampers with 4 x 78 = 312 forward units if never stopped, more than
#: the 300 the demo's bounded-damage guarantee allows to go undetected.
FULL = DemoSize(steps=80)
#: For tests: a few steps only (the attack may then go undetected without contradicting the proof).
QUICK = DemoSize(steps=5, block_size=16, batch_size=2, max_bytes=64 * 1024)


def _default_out() -> Path:
    return Path.cwd() / f"stagewarden-demo-{dt.datetime.now():%Y%m%d-%H%M%S}"


def _predictions(report: dict[str, Any], loaded: Any, tampered: int) -> dict[str, Any]:
    """The prover's figures for the demo spec and what they imply for ``tampered`` tampered units."""
    by_kind = {g["kind"]: g for g in report["guarantees"]}
    p = float(by_kind["detection"]["figure"]["value"]) if by_kind.get("detection", {}).get("figure") else None
    damage = next((g for g in loaded.spec.guarantees if g.kind == "bounded_damage"), None)
    max_undetected = int(damage.max_undetected) if damage is not None else None
    detect = None if p is None else 1.0 - (1.0 - p) ** tampered
    must = (
        max_undetected is not None
        and by_kind.get("bounded_damage", {}).get("verdict") == "holds"
        and tampered > max_undetected
    )
    return {
        "unit_detection_probability": p,
        "max_undetected": max_undetected,
        "damage_verdict": by_kind.get("bounded_damage", {}).get("verdict"),
        "no_framing_verdict": by_kind.get("no_framing", {}).get("verdict"),
        "liveness_verdict": by_kind.get("liveness", {}).get("verdict"),
        "tampered_units_if_never_stopped": tampered,
        "detection_probability": detect,
        "must_detect": must,
    }


def _run_config(loaded: Any, size: DemoSize, attack: Any = None) -> Any:
    from stagewarden.runtime.config import RunConfig
    from stagewarden.runtime.model import GPTConfig

    spec = loaded.spec
    settings: dict[str, Any] = {
        "stages": spec.topology.stages,
        "microbatches": spec.topology.microbatches,
        "standby": spec.topology.standby,
        "receipts": spec.defense.receipts,
        "attestation": spec.defense.attestation,
        "response": spec.defense.response[0],
    }
    spot = [c for c in spec.defense.checks if c.scheme == "spot_check"]
    if spot:
        settings["verification"] = "spot_check"
        settings["spot_check_rate"] = float(spot[0].rate)
    if attack is not None:
        settings["attack"] = attack
    model = GPTConfig(n_layer=size.n_layer, n_embd=size.n_embd, n_head=4, block_size=size.block_size)
    return RunConfig(
        steps=size.steps, model=model, batch_size=size.batch_size, max_bytes=size.max_bytes, seed=0, **settings
    )


def _detections(run: TrainingRecord) -> list[SignedDetection]:
    return run.detections


def _worker_of(detection: dict[str, Any]) -> str:
    if isinstance(detection.get("worker"), str):
        return str(detection["worker"])
    workers = detection.get("workers")
    return ", ".join(str(w) for w in workers) if isinstance(workers, list) and workers else "?"


def _response_text(run: TrainingRecord) -> str:
    if not run.responses:
        return "none"
    parts = []
    for record in run.responses:
        r = record.plan
        text: str = r.response
        if r.ejected:
            text += f" {r.ejected}"
        if r.standby:
            text += f", {r.standby} took stage {r.stage}"
        if r.checkpoint_step is not None:
            text += f", restored step {r.checkpoint_step}"
        if r.fallback_from:
            text += f" (instead of {r.fallback_from})"
        parts.append(text)
    unique = list(dict.fromkeys(parts))
    return "; ".join(f"{t} (x{parts.count(t)})" if parts.count(t) > 1 else t for t in unique)


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Directory for the two run directories (clean/ and attacked/).  [default: ./stagewarden-demo-<time>]",
)
@format_option("Output format (progress goes to standard error with json).")
@click.option("--quick", is_flag=True, hidden=True, help="A few steps only (for tests).")
@click.option(
    "--verifier-dir",
    type=click.Path(file_okay=False),
    help="The key folder of the attestation verifier each run starts (mode 0700).  "
    "[default: ~/.local/state/stagewarden/verifier, see 'stagewarden verifier serve --help']",
)
def demo(out: str | None, fmt: str, quick: bool, verifier_dir: str | None) -> None:
    """Prove the packaged demo protocol, then train with it: a clean run and an attacked one.

    Verifies the demo spec (`stagewarden examples show demo`), trains a small GPT in four
    attested stages with the spec's defence twice (once honestly, once with stage 1 negating
    every activation it sends from step 2 on), audits the clean run, and prints what the prover
    predicted beside what the runs observed. Ends by building the security report of the spec
    and both runs (`stagewarden report`) and printing the path of its index page. The run
    directories and the report go to --out.

    Exit codes: 0 ok; 1 the clean run failed or its audit found problems, an honest worker was
    blamed, the attacked run failed before any detection, or the attack went undetected where
    the proof says it cannot; 2 bad input.
    """
    from stagewarden.prover import Limits
    from stagewarden.spec import load_example

    started = time.perf_counter()
    target = Path(out) if out is not None else _default_out()
    if occupied(target):
        raise BadInput(f"--out {target} exists and is not empty; choose a new directory")
    size = QUICK if quick else FULL
    console = make_console(err=fmt == "json")
    loaded = load_example("demo")
    if fmt == "text":
        console.print("stagewarden demo: proving the packaged demo protocol (`stagewarden examples show demo`).")
    report = prove_with_status(loaded, None, Limits())
    report_json = report.to_json()
    if fmt == "text":
        from stagewarden.render import print_report

        print_report(console, report)
    if report.exit_code != EXIT_OK:
        if fmt == "json":
            click.echo(json.dumps({"version": 1, "proof": report_json, "runs": None}, indent=2))
        sys.exit(report.exit_code)

    from stagewarden.runtime.attacks import AttackPlan

    plan = AttackPlan.from_cli(ATTACK_KIND, str(ATTACK_STAGE), start=ATTACK_START)
    microbatches = loaded.spec.topology.microbatches
    tampered = sum(plan.active(ATTACK_STAGE, t, m) for t in range(size.steps) for m in range(microbatches))
    predicted = _predictions(report_json, loaded, tampered)
    try:
        clean_config = _run_config(loaded, size)
        attacked_config = _run_config(loaded, size, plan.to_json())
    except Exception as exc:  # a RunConfig the runtime refuses: say why, no traceback
        raise BadInput(f"the demo spec does not map onto this runtime: {exc}") from None
    target.mkdir(parents=True, exist_ok=True)
    console.print(
        f"\ntraining {clean_config.stages} attested stages (+{clean_config.standby} standby), "
        f"{clean_config.microbatches} micro-batches, {clean_config.steps} steps, "
        f"n_layer={clean_config.model.n_layer}, n_embd={clean_config.model.n_embd}; run directories under "
        f"{escape(str(target))}"
    )
    runs: dict[str, dict[str, Any]] = {}
    jobs = [("clean", clean_config), ("attacked", attacked_config)]
    with _progress(console) as progress:
        for name, config in jobs:
            runs[name] = _train(progress, name, config, target / name, verifier_dir)

    clean = runs["clean"]
    audits = {name: _audit(run) for name, run in runs.items() if run["error"] is None}
    failures = _judge(runs, audits, predicted)
    payload: dict[str, Any] = {
        "version": 1,
        "out": str(target),
        "proof": report_json,
        "predicted": predicted,
        "attack": plan.to_json(),
        "runs": {name: _observed(run, audits.get(name)) for name, run in runs.items()},
        "failures": failures,
    }
    report_path = _build_report(console, loaded, report, runs, target / "report", fmt)
    payload["report"] = str(report_path) if report_path is not None else None
    payload["seconds"] = round(time.perf_counter() - started, 1)  # proof, both runs, audits and report
    payload["disk_bytes"] = _disk_bytes(target)
    from stagewarden.attest.files import atomic_write_text

    atomic_write_text(target / "demo.json", json.dumps(payload, indent=2) + "\n")
    if fmt == "json":
        click.echo(json.dumps(payload, indent=2))
    else:
        _print_table(console, predicted, runs, audits, clean_config)
        for failure in failures:
            if "run failed" not in failure:
                console.print(f"[bold red]problem:[/] {escape(failure)}", markup=True)
        attacked = runs.get("attacked")
        if attacked is not None and attacked["error"] is None and attacked["summary"] is not None:
            if not _detections(attacked["summary"]) and predicted["unit_detection_probability"] is not None:
                k = predicted["tampered_units_if_never_stopped"]
                q = (1 - predicted["unit_detection_probability"]) ** k
                console.print(
                    f"the attack went undetected through {k} tampered units; the proof allows that with "
                    f"probability up to {q:.3g} (it rules it out only beyond {predicted['max_undetected']} units)."
                )
        if clean["error"] is None and not failures and all(r["error"] is None for r in runs.values()):
            console.print("[green]the clean run audits clean and every observation agrees with the proof.[/]")
        if report_path is not None:
            console.print(f"security report: {escape(str(report_path))}")
        console.print(
            f"the demo took {payload['seconds']:.0f} s (proof, two runs, audits, report) and wrote "
            f"{payload['disk_bytes'] / 1e6:.1f} MB to {escape(str(target))}"
        )
    sys.exit(EXIT_VIOLATED if failures else EXIT_OK)


def _disk_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _build_report(
    console: Console, loaded: Any, verdicts: Any, runs: dict[str, dict[str, Any]], out: Path, fmt: str
) -> Path | None:
    """The security report of the demo spec with the runs that left a summary; ``None`` if it failed."""
    from stagewarden.report import ReportError, build_report

    dirs = [run["dir"] for run in runs.values() if (Path(run["dir"]) / "summary.json").exists()]
    if fmt == "text":
        console.print(f"\nbuilding the security report of the demo spec and {len(dirs)} run(s) ...")
    try:
        return build_report(loaded, dirs, out, report=verdicts)
    except ReportError as exc:
        console.print(
            f"[bold red]problem:[/] the security report could not be built: {escape(exc.message)}", markup=True
        )
        return None


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=8)),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
        console=console,
        transient=False,
    )


def _train(progress: Progress, name: str, config: Any, run_dir: Path, verifier_dir: str | None) -> dict[str, Any]:
    """One training run with its progress line (its verifier's key in ``verifier_dir``); the
    summary, or the failure message."""
    from stagewarden.runtime.config import ConfigError
    from stagewarden.runtime.launch import LaunchError, LaunchInterrupted, launch_local

    task = progress.add_task(name, total=config.steps, status="starting the workers")
    detections = 0

    def on_event(event: dict[str, Any]) -> None:
        nonlocal detections
        kind = str(event.get("event", ""))
        if kind == "admitted":
            progress.update(task, status=f"admitted {event.get('worker')}")
        elif kind == "step" and isinstance(event.get("step"), int):
            flag = f"  [red]{detections} detection(s)[/]" if detections else ""
            progress.update(
                task,
                completed=min(int(event["step"]) + 1, config.steps),
                status=f"step {event['step']}  loss {float(event.get('loss', 0.0)):.4f}{flag}",
            )
        elif kind == "detection":
            detections += 1
            progress.update(task, status=f"[red]detection: {escape(_worker_of(event))} at step {event.get('step')}[/]")
        elif kind.startswith("response"):
            plan = event["plan"] if isinstance(event.get("plan"), dict) else event
            progress.update(task, status=f"[yellow]response: {escape(str(plan.get('response', kind)))}[/]")

    try:
        result = launch_local(config, run_dir, on_event=on_event, timeout=900.0, verifier_dir=verifier_dir)
    except LaunchInterrupted:
        raise KeyboardInterrupt from None  # stop the demo: no further run, exit 130
    except (LaunchError, ConfigError) as exc:
        progress.update(task, status=f"[red]failed: {escape(str(exc))}[/]")
        summary = None
        with contextlib.suppress(RunDirError):  # what the run observed before it stopped
            summary = RunRecord.from_json(run_dir / SUMMARY_FILE).training
        return {"config": config, "dir": run_dir, "summary": summary, "error": str(exc)}
    progress.update(task, completed=config.steps, status=f"done in {result.seconds:.0f} s")
    training = result.record.training
    return {"config": config, "dir": run_dir, "summary": training, "error": None, "seconds": result.seconds}


def _audit(run: dict[str, Any]) -> dict[str, Any]:
    from stagewarden.attest.audit import audit_run_dir
    from stagewarden.attest.errors import AttestError

    if not run["config"].receipts or not run["config"].attestation:
        return {"clean": None, "text": "not auditable (receipts or attestation off)", "errors": []}
    try:
        report = audit_run_dir(run["dir"])
    except (AttestError, OSError, ValueError) as exc:
        return {"clean": False, "text": f"cannot audit: {exc}", "errors": [str(exc)]}
    errors = [f"{f.code}: {f.message}" for f in report.errors]
    accused = sorted({w for f in report.errors for w in f.workers})
    text = f"clean ({report.receipts} receipts)" if report.clean else f"{len(errors)} error finding(s)"
    return {"clean": report.clean, "text": text, "errors": errors, "accused": accused}


def _judge(runs: dict[str, dict[str, Any]], audits: dict[str, dict[str, Any]], predicted: dict[str, Any]) -> list[str]:
    """What contradicts the proof or the demo's premise (each a reason for exit code 1)."""
    from stagewarden.runtime.worker import worker_id_for

    failures = []
    clean = runs["clean"]
    if clean["error"] is not None:
        failures.append(f"the clean run failed: {clean['error']}")
    if clean["summary"] is not None:
        if clean["summary"].status != "completed":
            failures.append(f"the clean run ended with status {clean['summary'].status!r}")
        if "clean" in audits and audits["clean"]["clean"] is False:
            failures.append("the audit of the clean run found problems: " + "; ".join(audits["clean"]["errors"][:3]))
        if _detections(clean["summary"]):
            failures.append("the clean run blamed an honest worker: " + _detections(clean["summary"])[0].worker)
    run = runs["attacked"]
    attacker = worker_id_for(ATTACK_STAGE)
    caught = run["summary"] is not None and bool(_detections(run["summary"]))
    if run["error"] is not None and not caught:
        failures.append(f"the attacked run failed before any detection: {run['error']}")
    if run["summary"] is not None:
        found = _detections(run["summary"])
        framed = [d.worker for d in found if d.worker != attacker]
        if framed:
            failures.append(f"the attacked run blamed {framed[0]}, not the attacker {attacker}")
        if not found and predicted["must_detect"] and run["error"] is None:
            failures.append(
                f"the attack went undetected through {predicted['tampered_units_if_never_stopped']} tampered "
                f"units; the proof allows at most {predicted['max_undetected']}"
            )
    accused = [w for w in audits.get("attacked", {}).get("accused", []) if w != attacker]
    if accused:
        failures.append(f"the audit of the attacked run accuses {', '.join(accused)}, not only the attacker")
    return failures


def _observed(run: dict[str, Any], audit: dict[str, Any] | None) -> dict[str, Any]:
    summary = run["summary"]
    if summary is None:
        return {"dir": str(run["dir"]), "error": run["error"]}
    found = _detections(summary)
    losses = summary.losses
    return {
        "dir": str(run["dir"]),
        "status": summary.status,
        "steps_completed": summary.steps_completed,
        "detections": len(found),
        "first_detection_step": found[0].step if found else None,
        "blamed": sorted({d.worker for d in found}),
        "responses": [r.model_dump(mode="python") for r in summary.responses],
        "final_loss": losses[-1] if losses else None,
        "tokens_per_second": summary.tokens_per_second,
        "audit": audit,
        "error": run["error"],
    }


def _print_table(
    console: Console,
    predicted: dict[str, Any],
    runs: dict[str, dict[str, Any]],
    audits: dict[str, dict[str, Any]],
    config: Any,
) -> None:
    from stagewarden.runtime.worker import standby_id_for, worker_id_for

    p = predicted["unit_detection_probability"]
    k = predicted["tampered_units_if_never_stopped"]
    attacker = worker_id_for(ATTACK_STAGE)
    table = Table(title="predicted (prover) vs observed (runs)", show_lines=True)
    table.add_column("", style="bold")
    table.add_column("predicted")
    table.add_column("clean run")
    table.add_column("attacked run")

    def cell(name: str, fn: Any) -> str:
        run = runs.get(name)
        if run is None:
            return "not run"
        if run["summary"] is None:
            return "[red]failed[/] (see below)"
        return str(fn(run["summary"]))

    def first(summary: TrainingRecord) -> str:
        found = _detections(summary)
        return str(found[0].step) if found else "-"

    def blamed(summary: TrainingRecord) -> str:
        return ", ".join(sorted({d.worker for d in _detections(summary)})) or "-"

    def loss(summary: TrainingRecord) -> str:
        losses = summary.losses
        return f"{losses[-1]:.4f} after {len(losses)} steps" if losses else "-"

    if p is not None:
        detect_text = f"clean 0; attacked >= 1 with P >= 1 - {1 - p:g}^{k} = {predicted['detection_probability']:.6g}"
        first_text = (
            f"about step {ATTACK_START + math.ceil(1 / p / config.microbatches)} (mean {1 / p:g} tampered units)"
        )
    else:
        detect_text, first_text = "no detection figure", "-"
    standby = standby_id_for(0) if config.standby else "no standby"

    def status(summary: TrainingRecord) -> str:
        text = f"{summary.status}, {summary.steps_completed} steps"
        return text if summary.status == "completed" else f"[red]{escape(text)}[/]"

    rows = [
        ("status", "completed", cell("clean", status), cell("attacked", status)),
        (
            "detections",
            detect_text,
            cell("clean", lambda s: len(_detections(s))),
            cell("attacked", lambda s: len(_detections(s))),
        ),
        ("first detection step", first_text, cell("clean", first), cell("attacked", first)),
        (
            "blamed worker",
            f"{attacker} only (no-framing {predicted['no_framing_verdict']})",
            cell("clean", blamed),
            cell("attacked", blamed),
        ),
        (
            "response",
            f"{config.response}: {standby} takes stage {ATTACK_STAGE}, resume from a verified checkpoint "
            f"(liveness {predicted['liveness_verdict']})",
            cell("clean", _response_text),
            cell("attacked", _response_text),
        ),
        ("final loss", "-", cell("clean", loss), cell("attacked", loss)),
        (
            "audit",
            "clean run: clean",
            escape(audits["clean"]["text"]) if "clean" in audits else cell("clean", lambda s: "-"),
            escape(audits["attacked"]["text"]) if "attacked" in audits else cell("attacked", lambda s: "-"),
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console.print()
    console.print(table)
    console.print(
        f"attacked run: stage {ATTACK_STAGE} ({attacker}) applies '{ATTACK_KIND}' to every activation it sends "
        f"from step {ATTACK_START} on; {k} tampered units if it is never stopped."
    )
    for name, run in runs.items():
        if run["error"] is None:
            continue
        if name == "attacked" and run["summary"] is not None and _detections(run["summary"]):
            console.print(
                f"[yellow]the attacked run stopped after the detection:[/] {escape(str(run['error']))}",
                markup=True,
            )
        else:
            console.print(f"[red]the {name} run failed:[/] {escape(str(run['error']))}", markup=True)
