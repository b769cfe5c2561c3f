"""Who holds each computing position over a run: the summary encoding of crashes, ejections,
framings and standby entries (docs/semantics.rst, "Dynamics: who holds a position over time").

The placement (``Encoding.mal``) is chosen once over every worker, standby workers included. A
run then vacates positions and lets standby workers enter them. Rather than unrolling event
sequences, the encoding keeps one summary per position:

* ``vacated[x]``: the original occupant left (a crash, an ejection as a convict, or an ejection
  after being framed);
* ``entered[x]``: a standby worker took the position afterwards;
* ``entered_malicious[x]``: that standby worker is malicious (one of the placement's malicious
  standby workers);
* ``occupied_malicious[x]``: the position has a malicious occupant at some point of the run
  (what the checks' covering rules read);
* ``present[x]``: the position has an occupant at the moment a unit is judged (what a
  ``replicate`` comparison reads).

Why the summary is complete, and its one conservative point, are written on the semantics page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import z3

from stagewarden.prover.fastz3 import Term, at_most, boolean, conj, disj, implies, neg, to_z3
from stagewarden.spec import ReplicateCheck

if TYPE_CHECKING:
    from stagewarden.prover.encoding import Encoding


@dataclass
class Occupancy:
    """The per-position summary variables of one encoding (all empty when nothing can move)."""

    active: bool
    occupied_malicious: list[Term]
    present: list[Term]
    #: A malicious occupant is in the position at the moment a unit is judged (the original
    #: occupant before it leaves, or an entered standby worker).
    acting: list[Term]
    vacated: dict[int, z3.BoolRef] = field(default_factory=dict)
    crashed: dict[int, z3.BoolRef] = field(default_factory=dict)
    entered: dict[int, z3.BoolRef] = field(default_factory=dict)
    entered_malicious: dict[int, z3.BoolRef] = field(default_factory=dict)
    #: Positions that only carry a second try (see :func:`build_occupancy`).
    light: set[int] = field(default_factory=set)
    #: ``outvoted[x]``: the original occupant of a replicated position was ejected after a
    #: ``replicate`` vote blamed it (what :func:`stagewarden.prover.framing.build_framings`
    #: orders: the first such vote of a slot counts no vacancy another vote makes).
    outvoted: dict[int, z3.BoolRef] = field(default_factory=dict)

    def extra_try(self, w: int, original_malicious: Term) -> Term:
        """A second malicious worker in position ``w`` over the run: its original occupant was
        malicious and a malicious standby worker entered after it."""
        entered = self.entered_malicious.get(w)
        if entered is None:
            return False
        return conj([original_malicious, entered])


def dynamics_possible(enc: Encoding) -> bool:
    """Whether positions can change hands or go vacant in a way a check can notice.

    Standby entry always can; without standby workers a vacancy matters only to a ``replicate``
    comparison (fewer copies), and a vacancy needs a crash or an ejection. The symbolic encoding
    of a small world always carries the summary, so that an unsat core can name the crash,
    standby and response assumptions a proof rests on."""
    spec = enc.spec
    if not enc.dynamics:
        return False
    if spec.topology.standby > 0:
        return True
    if not enc.concrete and len(enc.world.workers) <= SYMBOLIC_DYNAMICS_WORKERS:
        return True
    has_replicate = any(isinstance(c, ReplicateCheck) for c in spec.defense.checks)
    return has_replicate and (spec.adversary.faults.crash > 0 or "eject" in spec.defense.response)


#: Worlds up to this many workers carry the summary in the symbolic encoding whatever the spec
#: says, so that explanations can cite "0 crashed workers" or "0 standby workers".
SYMBOLIC_DYNAMICS_WORKERS = 128


def build_occupancy(enc: Encoding) -> Occupancy:
    """The summary variables and their free structure (the vacancy reasons are added later by
    :func:`vacancy_constraints`, once checks and framing can be evaluated)."""
    computing = enc.world.computing
    if not dynamics_possible(enc):
        mal = list(enc.mal)
        return Occupancy(False, mal, [True] * len(enc.mal), mal)
    occ: list[Term] = list(enc.mal)
    present: list[Term] = [True] * len(enc.mal)
    acting: list[Term] = list(enc.mal)
    out = Occupancy(True, occ, present, acting)
    full = _positions_that_can_change_hands(enc)
    spec = enc.spec
    # In the concrete form a removal of a malicious original needs a crash fault or eject.
    removals = not enc.concrete or spec.adversary.faults.crash > 0 or "eject" in spec.defense.response
    replicated = any(isinstance(c, ReplicateCheck) for c in spec.defense.checks)
    for w in computing:
        name = enc.world.workers[w].name
        if w not in full and (not removals or not enc.second_tries):
            continue
        if w not in full:
            # Always corruptible and compared by no other copy: an honest original replaced by
            # a malicious standby is no better for the adversary than a malicious original
            # (same budget, no standby used), and a vacancy here only stops its replica. What
            # remains is a malicious standby entering after the malicious original is removed:
            # a second try in the same position.
            second = out.entered_malicious[w] = boolean(f"second_try[{name}]")
            out.vacated[w] = out.entered[w] = second
            out.crashed[w] = boolean(f"crashed[{name}]")
            out.light.add(w)
            enc.facts.append(to_z3(implies(second, enc.mal[w])))
            continue
        vac = out.vacated[w] = boolean(f"vacated[{name}]")
        out.crashed[w] = boolean(f"crashed[{name}]")
        ent = out.entered[w] = boolean(f"entered[{name}]")
        ent_mal = out.entered_malicious[w] = boolean(f"entered_malicious[{name}]")
        enc.facts.append(to_z3(implies(ent, vac)))
        enc.facts.append(to_z3(implies(ent_mal, ent)))
        occ[w] = disj([enc.mal[w], ent_mal])
        present[w] = disj([neg(vac), ent])
        acting[w] = disj([conj([enc.mal[w], neg(vac)]), ent_mal])
        if replicated:
            voted = out.outvoted[w] = boolean(f"outvoted[{name}]")
            enc.facts.append(to_z3(implies(voted, conj([vac, neg(enc.mal[w])]))))
    return out


def _positions_that_can_change_hands(enc: Encoding) -> set[int]:
    """Positions whose occupant can matter beyond a malicious original: those covered by a
    trust entry (only a standby can bring the adversary there) and every copy of a replicated
    slot (an emptied copy weakens the comparison)."""
    world, spec = enc.world, enc.spec
    if any(isinstance(c, ReplicateCheck) for c in spec.defense.checks):
        return set(world.computing)
    out: set[int] = set()
    for ref in [*spec.trust.honest, *spec.trust.tee]:
        out.update(world.covered(ref))
    return out


def crash_limit(enc: Encoding) -> Term:
    """At most ``faults.crash`` positions are vacated by a crash (part of the crash assumption)."""
    occ = enc.occupancy
    crashed = list(occ.crashed.values())
    allowed = enc.spec.adversary.faults.crash
    if not crashed or len(crashed) <= allowed:
        return True
    return at_most(crashed, allowed)


def standby_limit(enc: Encoding) -> Term:
    """At most ``standby`` entries, and every malicious entry is one of the placement's
    malicious standby workers (part of the standby assumption)."""
    occ = enc.occupancy
    entered = list(occ.entered.values())
    if not entered:
        return True
    count = enc.spec.topology.standby
    parts: list[Term] = [at_most(entered, count)] if len(entered) > count else []
    standby_mal = [enc.mal[w] for w in enc.world.standby_workers]
    entered_mal = list(occ.entered_malicious.values())
    # sum(entered malicious) <= sum(standby malicious), as
    # sum(entered malicious) + sum(not standby malicious) <= |standby|
    parts.append(at_most(entered_mal + [to_z3(neg(m)) for m in standby_mal], len(standby_mal)))
    return conj(parts)


def vacancy_constraints(
    enc: Encoding, catchable: Callable[[int], Term], framed: Callable[[int], Term]
) -> list[z3.BoolRef]:
    """Every vacancy has a reason: a crash, an ejection as a convict (malicious, and withholding
    or catchable in its position), or an ejection after a framing (honest, and framed)."""
    occ = enc.occupancy
    eject = enc.response["eject"]
    withhold = enc.cap["withhold"]
    out: list[z3.BoolRef] = []
    for w, vac in occ.vacated.items():
        convict = conj([enc.mal[w], eject, disj([withhold, catchable(w)])])
        victim = False if w in occ.light else conj([neg(enc.mal[w]), eject, framed(w)])
        out.append(to_z3(implies(vac, disj([occ.crashed[w], convict, victim]))))
    return out
