"""Plain-language reasons: why a check passed or caught a unit in a counterexample, and where the
spec states each assumption."""

from __future__ import annotations

from fractions import Fraction

import z3

from stagewarden.prover.encoding import Assumption, Effect, Encoding
from stagewarden.prover.fastz3 import Term, holds_in
from stagewarden.prover.verdict import AssumptionRef
from stagewarden.spec import RedundantNeighbourCheck


def _true(model: z3.ModelRef, expr: Term) -> bool:
    return holds_in(model, expr)


def assumption_ref(enc: Encoding, assumption: Assumption) -> AssumptionRef:
    """Turn an encoding assumption into a reference with the spec's ``file:line``."""
    source = enc.loaded.source
    location = source.key(assumption.path) if source.has(assumption.path) else source.value(assumption.path)
    where = f"{location.file}:{location.line}"
    text = assumption.text
    if not source.has(assumption.path):
        text += " (default)"
    return AssumptionRef(assumption.key, text, where)


def effect_reason(enc: Encoding, model: z3.ModelRef, w: int, effect: Effect, on: bool, value: Fraction) -> str:
    """Why a check is or is not in force for worker ``w``'s tampered unit, in the model."""
    world = enc.world
    s, r = world.slot_of(w)
    name = world.workers[w].name
    if on:
        if effect.value is None or value < 1:
            return f"catches it with probability {value}"
        return "catches it with certainty"
    i = effect.check
    if effect.label == "redundant_neighbour" and i is not None:
        checker = world.primary(s + 1, r)
        if not _true(model, enc.check_present[i]):
            return "not part of the protocol"
        if _true(model, enc.covers(checker, w)):
            return f"the checker {world.workers[checker].name} is malicious and covers for {name}"
        check = enc.spec.defense.checks[i]
        assert isinstance(check, RedundantNeighbourCheck)
        if check.input_via == "checked_worker":
            return f"{name} itself forwards the checker's input and forges one consistent with its output (no receipts)"
        if check.input_via == "upstream" and s >= 1:
            up = world.primary(s - 1, r)
            return (
                f"the upstream worker {world.workers[up].name} colludes and sends the checker a matching forged input"
            )
        return "the coordinator relaying the input is untrusted"
    if effect.label.startswith("spot_check"):
        if i is not None and not _true(model, enc.check_present[i]):
            return "not part of the protocol"
        if not _true(model, enc.receipts):
            return "without receipts the worker has not committed to the unit and recomputes honestly when challenged"
        if effect.label.endswith("(peer)"):
            return "the verifier is not a peer"
        return (
            "the verifier gives no assurance (an untrusted coordinator, or a TEE without attestation or that "
            "may be compromised)"
        )
    if effect.label == "replicate":
        return "every other copy of the slot is malicious and agrees on the forged value"
    if effect.label == "statistical":
        return "the coordinator running the detector is untrusted"
    if effect.label == "batch proof":
        if not _true(model, enc.data_commitment):
            return "the training data is not committed, so a swapped batch cannot be told apart"
        return "no honest party checks the batch proof"
    if effect.label == "receipt linkage":
        if not _true(model, enc.receipts):
            return "without receipts the two messages are never compared"
        return "the coordinator that compares signed digests is untrusted"
    return "not in force"
