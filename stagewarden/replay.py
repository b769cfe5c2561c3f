"""Replay a prover counterexample as a live attack in the runtime, and then against a defence
that :func:`~stagewarden.prover.synthesis.synthesize` proposes.

A violated guarantee's trace names the malicious workers, their roles (``tamperer``,
``covers``, ``equivocation``) and the action of each; :func:`plan_replay` maps it onto a
:class:`~stagewarden.runtime.config.RunConfig`: the spec's topology and defence (as
``stagewarden train --spec`` maps them), a small model with one block per stage, and an attack
plan that fires from step 1 on every unit of the trace's workers. :func:`observe` then says,
from the run directory alone, whether the run shows what the trace predicts.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

from stagewarden.spec import LoadedSpec

#: The step from which a replayed attack fires: step 0 runs honestly, as a baseline.
ATTACK_START = 1
#: The guarantee kinds whose counterexample is an attack the runtime can mount.
REPLAYABLE = ("detection", "no_framing", "bounded_damage", "data_integrity", "liveness")


class ReplayError(ValueError):
    """The guarantee cannot be replayed (the message says why)."""


@dataclasses.dataclass(frozen=True)
class ReplayPlan:
    """A trace mapped onto a runtime configuration.

    Attributes:
        guarantee: The guarantee id.
        kind: Its kind.
        description: The trace's description of the attack.
        prediction: What the trace predicts a run shows, in words.
        config: The run configuration (attack included).
        mapping: How each part of the trace became part of the configuration, in words.
    """

    guarantee: str
    kind: str
    description: str
    prediction: str
    config: Any
    mapping: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Observation:
    """Whether a run shows what a trace predicts (``shows``), and why (``detail``)."""

    shows: bool
    detail: str
    detections: int
    tampered: int
    undetected: int
    in_model: int
    framed: int


def _slot(worker: str, settings: dict[str, Any]) -> tuple[int, int]:
    """The stage and pipeline (:class:`~stagewarden.runtime.layout.Layout`) of a trace's worker
    ``s:r`` (``s:r#j`` for copy ``j`` of a ``replicate`` check)."""
    copies = int(settings.get("replicate_factor", 1)) if settings.get("verification") == "replicate" else 1
    replicas = int(settings.get("replicas", 1))
    name, _, copy = worker.partition("#")
    stage, _, replica = name.partition(":")
    r, c = int(replica or 0), int(copy or 0)
    if r >= replicas or c >= copies:
        raise ReplayError(f"worker {worker} is not a position of {replicas} replica(s) x {copies} copies")
    return int(stage), r * copies + c


def attack_from_trace(trace: dict[str, Any], settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The attack plan (JSON) a trace's malicious workers mount, and how it was chosen.

    ``tamper_activations`` becomes ``reverse`` on the activations the stage sends, or on the
    input it computes on when the checker gets that input from the checked stage itself
    (``input_via: checked_worker``: the trace's forged consistent pair); ``tamper_gradients``
    becomes ``reverse`` on the gradients, ``tamper_weights`` ``weights``, ``equivocate``
    ``equivocate``, ``poison_data`` and ``false_accuse`` themselves. A worker whose role is
    ``covers`` only colludes as a checker, but a ``replicate`` copy that covers for another copy
    of its slot tampers alike (so the copies agree on the forged value). A worker ``s:r#j`` is copy
    ``j`` of slot ``s:r``; the plan names the stages and the pipelines of the malicious workers, so
    they must be every stage of the same pipelines.

    Raises:
        ReplayError: The trace has no malicious worker, or an action the runtime cannot mount.
    """
    from stagewarden.runtime.attacks import AttackPlan

    malicious = trace.get("malicious") or []
    if not malicious:
        raise ReplayError("the trace has no malicious worker: there is no attack to replay")
    covering = {_slot(m["worker"], settings) for m in malicious if m.get("role") == "covers"}
    acting = {_slot(m["worker"], settings) for m in malicious if m.get("role") != "covers"}
    if settings.get("verification") == "replicate":
        # a copy that covers for another copy of its slot agrees on the forged value: it tampers alike
        acting |= covering
        covering = set()
    covers = sorted({s for s, _ in covering})
    actors = sorted({s for s, _ in acting})
    pipelines = sorted({p for _, p in acting}) or [0]
    if acting != {(s, p) for s in actors for p in pipelines} or any(p != 0 for _, p in covering):
        raise ReplayError(
            "the trace's malicious workers are not every stage of the same pipelines, which is what the "
            "runtime's attack plans mount"
        )
    actions = [s.get("action") for s in trace.get("states", []) if s.get("action") not in (None, "recompute")]
    action = actions[0] if actions else "tamper_activations"
    notes = []
    direction = "forward"
    kinds = {
        "tamper_activations": "reverse",
        "tamper_gradients": "reverse",
        "tamper_weights": "weights",
        "equivocate": "equivocate",
        "poison_data": "poison_data",
        "false_accuse": "false_accuse",
    }
    if action not in kinds:
        raise ReplayError(f"the trace's action {action!r} has no counterpart among the runtime's attacks")
    kind = kinds[action]
    if action == "tamper_gradients":
        direction = "backward"
    elif action == "tamper_activations" and settings.get("input_via") == "checked_worker":
        direction = "input"
        notes.append(
            "tamper_activations under input_via checked_worker: the stage forges the input it computes on "
            "and relays it to its checker (the trace's consistent pair)"
        )
    plan = AttackPlan.from_cli(kind, actors, 1.0, ATTACK_START, direction=direction, covers=covers, pipelines=pipelines)
    where = f" of pipeline(s) {', '.join(map(str, pipelines))}" if pipelines != [0] else ""
    notes.insert(
        0,
        f"{action} by stage(s) {', '.join(map(str, actors))}{where} -> attack {kind} ({direction}) on every unit "
        f"from step {ATTACK_START}" + (f"; stage(s) {', '.join(map(str, covers))} cover as checkers" if covers else ""),
    )
    return plan.to_json(), notes


def _prediction(kind: str, trace: dict[str, Any]) -> str:
    outcome = trace.get("outcome", {})
    if kind == "detection":
        return (
            f"tampered units pass the checks (detection probability {outcome.get('detection_probability')}, "
            f"required {outcome.get('required')}): some go undetected"
        )
    if kind == "no_framing":
        return f"an honest worker ({outcome.get('blamed', 'one the attack does not control')}) is blamed"
    if kind == "bounded_damage":
        return (
            f"tampered units stay in the model after the response (more than {outcome.get('max_undetected')} "
            f"with probability {outcome.get('probability')}, above the bound {outcome.get('bound')})"
        )
    if kind == "data_integrity":
        return "poisoned samples reach the model"
    return "training cannot go on: some stage is left without a worker"


def plan_replay(loaded: LoadedSpec, guarantee_id: str, steps: int, report: Any = None) -> ReplayPlan:
    """Prove the spec, take the trace of ``guarantee_id`` and map it onto a run configuration.

    Raises:
        ReplayError: No such guarantee, it is not violated, or its trace cannot be mounted.
    """
    from stagewarden.prover import verify
    from stagewarden.runtime.config import ConfigError, RunConfig
    from stagewarden.runtime.model import GPTConfig
    from stagewarden.spec_settings import spec_settings

    ids = [g.id for g in loaded.spec.guarantees]
    if guarantee_id not in ids:
        import difflib

        close = difflib.get_close_matches(guarantee_id, ids, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ReplayError(f"the spec has no guarantee {guarantee_id!r}{hint}; it has: {', '.join(ids)}")
    report = report if report is not None else verify(loaded, [guarantee_id])
    result = next(g for g in report.guarantees if g.id == guarantee_id)
    if result.verdict != "violated" or not result.trace:
        raise ReplayError(f"guarantee {guarantee_id} is {result.verdict}: there is no attack trace to replay")
    if result.kind not in REPLAYABLE:
        raise ReplayError(f"guarantee {guarantee_id} is a {result.kind} guarantee: its counterexample is not an attack")
    settings = spec_settings(loaded)
    attack, notes = attack_from_trace(result.trace, settings)
    stages = int(settings["stages"])
    settings["microbatches"] = min(int(settings["microbatches"]), 2)
    notes.append(
        f"topology and defence from the spec ({stages} stages, {settings.get('verification', 'none')} verification, "
        f"response {settings['response']}); {settings['microbatches']} micro-batches and {steps} steps of a "
        f"{stages}-layer model of width 32 keep the run short"
    )
    try:
        config = RunConfig(
            model=GPTConfig(n_layer=stages, n_embd=32, n_head=4, block_size=16),
            batch_size=4,
            steps=steps,
            max_bytes=64 * 1024,
            attack=attack,
            **settings,
        )
    except ConfigError as exc:
        raise ReplayError(f"the trace cannot be mounted in the runtime: {exc}") from None
    description = str(result.trace.get("#meta", {}).get("description", ""))
    return ReplayPlan(
        guarantee_id, result.kind, description, _prediction(result.kind, result.trace), config, tuple(notes)
    )


def observe(kind: str, run_dir: str | Path, expect_attack: bool, max_undetected: int | None = None) -> Observation:
    """What a replay's run directory shows about a guarantee of ``kind``.

    With ``expect_attack`` (the spec's own defence) ``shows`` is whether the run shows what the
    trace predicts: a tampered unit went undetected (``detection``), an honest stage was blamed
    (``no_framing``), tampered units stayed in the final model (``bounded_damage``), poisoned
    data reached it (``data_integrity``), training stopped (``liveness``). Otherwise (a proposed
    defence) it is whether the defence stopped the attack: every tampered unit detected, with a
    malicious stage blamed (``detection``); no honest stage blamed (``no_framing``); at most
    ``max_undetected`` tampered units in the final model (``bounded_damage``); no poisoned data
    in it (``data_integrity``); training completed (``liveness``).
    """
    from stagewarden.attest.rundir import RunDir
    from stagewarden.guarantee_observation import _tally
    from stagewarden.run_history import attacking_workers, read_events, reconstruct
    from stagewarden.runtime.config import RunConfig

    training = RunDir(run_dir).summary.require_training()
    config = RunConfig.from_json(training.config)
    attack = config.attack
    events, _ = read_events(Path(run_dir) / "events.jsonl")
    history = reconstruct(events)
    tally = _tally(attack, history, config)
    covers = set(attack.get("covers", []))
    attackers = attacking_workers(attack, training.config)
    detections = training.detections
    framed = [d for d in detections if d.worker not in attackers and d.stage not in covers]
    convicted = [d for d in detections if d.worker in attackers or d.stage in covers]
    poisoned = len(tally.in_model) if attack.get("kind") == "poison_data" else 0
    counts = dict(
        detections=len(detections),
        tampered=len(tally.caught) + len(tally.missed),
        undetected=len(tally.missed),
        in_model=len(tally.in_model),
        framed=len(framed),
    )
    said = (
        f"{counts['tampered']} tampered unit(s), {counts['undetected']} undetected, {counts['in_model']} in the "
        f"final model; {len(detections)} detection(s), {len(framed)} blaming an honest stage; "
        f"status {training.status}"
    )
    if kind == "detection":
        broken = counts["undetected"] > 0
    elif kind == "no_framing":
        broken = bool(framed)
    elif kind == "bounded_damage":
        broken = counts["in_model"] > 0
    elif kind == "data_integrity":
        broken = poisoned > 0
    else:
        broken = training.status != "completed"
    if expect_attack:
        return Observation(broken, said, **counts)
    if kind == "detection":
        caught = bool(convicted) and not broken
    elif kind == "bounded_damage":
        caught = max_undetected is not None and counts["in_model"] <= max_undetected
    else:
        caught = not broken
    return Observation(caught, said, **counts)


def without_budgets(loaded: LoadedSpec, guarantee_id: str, keep_others: bool = True) -> LoadedSpec:
    """The spec without its ``overhead`` guarantees (``keep_others``), or with only guarantee
    ``guarantee_id``: what a proposed defence must make hold."""
    from ruamel.yaml import YAML

    from stagewarden.spec import load_text

    yaml = YAML()
    data = yaml.load(loaded.text)
    if keep_others:
        data["guarantees"] = [
            g for g in data["guarantees"] if g.get("kind") != "overhead" or g.get("id") == guarantee_id
        ]
        what = "overhead budgets left out"
    else:
        data["guarantees"] = [g for g in data["guarantees"] if g.get("id") == guarantee_id]
        what = f"guarantee {guarantee_id} only"
    out = io.StringIO()
    yaml.dump(data, out)
    return load_text(out.getvalue(), f"{loaded.file} ({what})")


def propose_defence(loaded: LoadedSpec, guarantee_id: str, timeout: float | None = None) -> tuple[LoadedSpec, str, str]:
    """The spec with the defence :func:`~stagewarden.prover.synthesis.synthesize` proposes, that
    defence's YAML block, and what the search was asked for.

    The search keeps every guarantee but the ``overhead`` budgets, which may rule out every
    defence that stops the attack; when it finds nothing, it is asked for the replayed guarantee
    alone. Keeping the other guarantees matters: alone, ``no_framing`` holds when nothing checks
    anybody, which frames no one but stops no attack either.

    Raises:
        ReplayError: Neither search finds a defence.
    """
    from stagewarden.prover import Limits
    from stagewarden.prover.synthesis import FOUND, synthesize
    from stagewarden.spec import load_text

    reasons = []
    for keep_others in (True, False):
        asked = without_budgets(loaded, guarantee_id, keep_others)
        result = synthesize(asked, Limits(timeout=timeout))
        if result.status == FOUND and result.spec_text is not None and result.yaml_block is not None:
            scope = "every guarantee but the overhead budgets" if keep_others else f"guarantee {guarantee_id} alone"
            return load_text(result.spec_text, f"{loaded.file} (proposed defence)"), result.yaml_block, scope
        reasons.append(result.reason or result.status)
    raise ReplayError(f"synthesize finds no defence for guarantee {guarantee_id}: {'; '.join(reasons)}")
