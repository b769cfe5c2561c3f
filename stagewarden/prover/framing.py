"""The ways an honest worker can be blamed (docs/semantics.rst, ``no_framing``): equivocation,
false accusation by a checker, outvoting in a ``replicate`` slot, and an untrusted coordinator.

A mechanism names its victim (an original occupant, honest in the placement) and its framers,
read through the occupancy summary: a framer counts when its position has a malicious occupant
at some point of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from stagewarden.prover.fastz3 import Term, at_least, at_most, conj, disj, neg, to_z3
from stagewarden.spec import RedundantNeighbourCheck, ReplicateCheck, SpotCheck

if TYPE_CHECKING:
    from stagewarden.prover.encoding import Encoding


@dataclass(frozen=True)
class Framing:
    """One way to blame ``victim``: the mechanism's name, the framers it names (empty when any
    malicious computing worker, or the coordinator, frames) and its condition."""

    mechanism: str
    victim: int
    framers: tuple[int, ...]
    condition: Term
    #: When the framing also gets the victim ejected (with ``eject``): a tied vote blames both
    #: sides, so the framers are ejected with it.
    ejects: Term | None = None

    @property
    def ejection(self) -> Term:
        """The condition under which the framing ejects the victim."""
        return self.condition if self.ejects is None else self.ejects


def _at_least(terms: list[Term], n: int) -> Term:
    if n <= 0:
        return True
    live = [t for t in terms if t is not False]
    if any(t is True for t in live):
        rest = [t for t in live if t is not True]
        return _at_least(rest, n - (len(live) - len(rest)))
    if len(live) < n:
        return False
    if n == 1:
        return disj(live)
    return at_least([to_z3(t) for t in live], n)


def _at_most_one(terms: list[Term]) -> Term:
    live = [t for t in terms if t is not False]
    if sum(1 for t in live if t is True) > 1:
        return False
    if len(live) <= 1:
        return True
    return at_most([to_z3(t) for t in live], 1)


def ceil_half(k: int) -> int:
    """Copies needed to win or tie a vote of ``k``: ``ceil(k / 2)``."""
    return (k + 1) // 2


def _first_vote(enc: Encoding, victim: int, members: list[int]) -> Term:
    """The malicious copies of the slot win or tie a vote against the honest ``victim`` before
    any vote of the slot has ejected anyone: a copy outvoted later still counts as an honest
    copy present, a malicious standby worker counts only where no vote vacated its position,
    and a malicious original counts whatever happens to it later (the adversary removes it
    after the vote)."""
    occupancy = enc.occupancy
    against: list[Term] = []
    beside: list[Term] = []
    for o in members:
        if o == victim:
            continue
        voted = occupancy.outvoted.get(o, False)
        entered = occupancy.entered_malicious.get(o, False)
        bad = disj([enc.mal[o], conj([entered, neg(voted)])])
        present = disj([neg(occupancy.vacated.get(o, False)), voted])
        against.append(bad)
        beside.append(disj([bad, neg(present)]))
    ties = _at_least(against + beside, len(members))
    agree = disj([enc.collusion, _at_most_one(against)])
    return conj([neg(enc.mal[victim]), ties, agree])


def _left_after_tie(enc: Encoding, o: int) -> Term:
    """Copy ``o`` has no malicious voter left after a tied vote that ejected it: it never had a
    malicious occupant, or its position was vacated, and whoever entered afterwards is not a
    malicious standby worker that could only have voted before (one that entered after a
    malicious original's ejection is allowed, and so is any where the placement has two
    malicious standby workers to enter one after the other, which the summary does not tell
    apart)."""
    occupancy = enc.occupancy
    vacated = occupancy.vacated.get(o, False)
    entered = occupancy.entered_malicious.get(o, False)
    standby = [enc.mal[w] for w in enc.world.standby_workers]
    twice = _at_least(standby, 2) if enc.spec.malicious_budget >= 2 else False
    after = disj([enc.mal[o], neg(entered), twice])
    return disj([neg(occupancy.occupied_malicious[o]), conj([vacated, after])])


def build_framings(enc: Encoding, victims: set[int] | None = None) -> list[Framing]:
    """Every framing mechanism of the spec whose condition is not constantly false (of the
    given victims only, when ``victims`` is given)."""
    world, spec = enc.world, enc.spec

    def wanted(victim: int) -> bool:
        return victims is None or victim in victims

    occ = enc.occupancy.occupied_malicious
    # A victim's "not malicious" term, made once however many mechanisms name it.
    innocent: dict[int, Term] = {}

    def honest(victim: int) -> Term:
        term = innocent.get(victim)
        if term is None:
            term = innocent[victim] = neg(enc.mal[victim])
        return term

    out: list[Framing] = []
    no_referee = disj([neg(enc.receipts), neg(enc.coord_trusted)])
    computing = world.computing
    any_computing = disj([occ[w] for w in computing])
    for i, check in enumerate(spec.defense.checks):
        present = enc.check_present[i]
        if isinstance(check, RedundantNeighbourCheck):
            equivocation = conj([present, enc.via_up[i], enc.cap["equivocate"], neg(enc.receipts)])
            accusation = conj([present, enc.cap["false_accuse"], no_referee])
            # A mechanism the spec rules out (a constant False in the concrete encoding) frames
            # nobody: its victims are skipped rather than each given a condition that folds away.
            for r in range(world.replicas):
                for s in range(1, world.stages - 1) if equivocation is not False else ():
                    up = world.primary(s - 1, r)
                    for victim in filter(wanted, world.slots[(s, r)]):
                        out.append(
                            Framing("equivocation", victim, (up,), conj([equivocation, occ[up], honest(victim)]))
                        )
                for s in range(0, world.stages - 1) if accusation is not False else ():
                    checker = world.primary(s + 1, r)
                    for victim in filter(wanted, world.slots[(s, r)]):
                        out.append(
                            Framing(
                                "false accusation",
                                victim,
                                (checker,),
                                conj([accusation, occ[checker], honest(victim)]),
                            )
                        )
        elif isinstance(check, SpotCheck):
            base = conj([present, enc.vf[i]["peer"], enc.cap["false_accuse"], no_referee, any_computing])
            for victim in filter(wanted, computing) if base is not False else ():
                # The victim is honest, so any malicious computing worker is another one.
                out.append(Framing("false accusation by a peer verifier", victim, (), conj([base, honest(victim)])))
        elif isinstance(check, ReplicateCheck):
            tamper = disj([enc.cap["tamper_activations"], enc.cap["tamper_gradients"], enc.cap["tamper_weights"]])
            vote = conj([present, disj([neg(enc.referee[i]), neg(enc.coord_trusted)]), tamper])
            accusation = conj([present, enc.cap["false_accuse"], no_referee])
            here = enc.occupancy.present
            for members in world.slots.values():
                if victims is not None and not any(map(wanted, members)):
                    continue
                first = {u: _first_vote(enc, u, members) for u in members}
                for victim in filter(wanted, members):
                    others = tuple(o for o in members if o != victim)
                    voters = [occ[o] for o in others]
                    # The vote is among the copies present: the malicious ones win or tie when
                    # they are at least as many as the honest ones, the victim included.
                    against = [conj([occ[o], here[o]]) for o in others]
                    beside = [neg(conj([neg(occ[o]), here[o]])) for o in others]
                    wins = _at_least(against + beside, 2 + len(others))
                    # Some vote of the slot comes first and counts only the vacancies that no
                    # vote makes; once one honest copy is outvoted, fewer honest copies remain
                    # and every later vote in the slot is won too (the malicious copies stay).
                    earlier = [conj([enc.occupancy.outvoted.get(u, False), first[u]]) for u in others]
                    outvoted = conj([vote, honest(victim), disj([first[victim], *earlier])])
                    # A tie blames both sides: unless the malicious copies hold a strict
                    # majority, they are ejected with the victim. A malicious standby worker
                    # still in its position at the end cannot have been a tying voter (ejected)
                    # unless a second standby worker entered there after it.
                    gone = conj([_left_after_tie(enc, o) for o in others])
                    mark = enc.occupancy.outvoted.get(victim, True)
                    ejects = conj([outvoted, mark, disj([wins, gone])])
                    out.append(Framing("outvoting", victim, others, outvoted, ejects))
                    out.append(
                        Framing(
                            "false accusation by a replica",
                            victim,
                            others,
                            conj([accusation, honest(victim), disj(voters)]),
                        )
                    )
    # An untrusted coordinator decides blame itself: without signed evidence that others can
    # check, it frames any honest worker, whatever the adversary's budget.
    coordinator = conj([neg(enc.coord_trusted), neg(enc.receipts)])
    if coordinator is not False:
        for victim in filter(wanted, computing):
            out.append(Framing("untrusted coordinator", victim, (), conj([coordinator, honest(victim)])))
    return [f for f in out if f.condition is not False]
