"""The value of a ``spot_check`` whose verifier is a peer (docs/semantics.rst, ``spot_check``):
the verifier is drawn from the other positions that are occupied when the unit is checked, so a
vacancy (a crash, an ejection) removes a possible honest verifier, and with collusion every
malicious occupant covers. A vacancy counts only where the checked unit's replica still runs:
a vacant position of a slot with no other occupied copy halts its replica, which then computes
no unit to check.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import z3

from stagewarden.prover.fastz3 import Term, at_least, at_most, conj, disj, implies, neg, to_z3

if TYPE_CHECKING:
    from stagewarden.prover.encoding import Encoding

#: Per encoding: the positions that can end a run vacant without a malicious occupant, with
#: their vacancy terms (:func:`vacant_honest`).
_VACANT: WeakKeyDictionary[Encoding, tuple[list[int], list[z3.BoolRef]]] = WeakKeyDictionary()
#: Per encoding and replica: the vacancies a peer check of a unit there can count.
_SEEN_FROM: WeakKeyDictionary[Encoding, dict[int, list[z3.BoolRef]]] = WeakKeyDictionary()


def peer_value(computing: int, rate: Fraction, malicious: int, colluding: bool, vacant: int = 0) -> Fraction:
    """Detection value with ``computing`` positions, ``malicious`` of them malicious (the unit's
    own worker included) and ``vacant`` others vacant: ``rate`` times the share of honest
    verifiers among the occupied other positions (0 when none is occupied)."""
    others = computing - 1 - vacant
    if vacant and others <= 0:
        return Fraction(0)
    if not colluding or computing <= 1:
        return rate
    return max(Fraction(0), rate * Fraction(others - (malicious - 1), others))


def _vacancies(enc: Encoding) -> tuple[list[int], list[z3.BoolRef]]:
    known = _VACANT.get(enc)
    if known is None:
        occupancy = enc.occupancy
        positions: list[int] = []
        terms: list[z3.BoolRef] = []
        if occupancy.active:
            for x in enc.world.computing:
                term = conj([neg(occupancy.occupied_malicious[x]), neg(occupancy.present[x])])
                if term is not False:
                    positions.append(x)
                    terms.append(to_z3(term))
        known = _VACANT[enc] = (positions, terms)
    return known


def vacant_honest(enc: Encoding) -> list[z3.BoolRef]:
    """Per computing position that can end a run vacant without a malicious occupant ever
    there: it is vacant then (a malicious occupant covers rather than leaves: at the moment the
    adversary picks, it is present)."""
    return _vacancies(enc)[1]


def vacancy_view(enc: Encoding, replica: int) -> int | None:
    """The replica whose running a peer check of a unit in ``replica`` must account for: None
    when no vacancy of :func:`vacant_honest` can halt it (the vacancies then look the same from
    every replica, and the units of all replicas share one level formula)."""
    return None if vacant_seen_from(enc, replica) is vacant_honest(enc) else replica


def vacant_seen_from(enc: Encoding, replica: int | None) -> list[z3.BoolRef]:
    """The vacancies a peer check of a unit in ``replica`` can count: those of
    :func:`vacant_honest` outside ``replica``, and inside it those of a slot another copy of
    which is occupied. A vacant position whose slot has no other occupied copy halts its
    replica (no unit of it is computed meanwhile), so such a vacancy lowers a peer check's value
    only for units of other replicas. ``None`` stands for every vacancy."""
    positions, every = _vacancies(enc)
    if replica is None or not every:
        return every
    by_replica = _SEEN_FROM.setdefault(enc, {})
    known = by_replica.get(replica)
    if known is None:
        world, occupancy = enc.world, enc.occupancy
        seen: list[z3.BoolRef] = []
        changed = False
        for x, term in zip(positions, every, strict=True):
            if world.workers[x].replica != replica:
                seen.append(term)
                continue
            changed = True
            kept = conj([term, disj([occupancy.present[y] for y in world.slots[world.slot_of(x)] if y != x])])
            if kept is not False:
                seen.append(to_z3(kept))
        known = by_replica[replica] = seen if changed else every
    return known


def colluding_condition(enc: Encoding, shift: int, good: Callable[[int, int], bool], replica: int | None) -> Term:
    """With collusion, the condition on the number of malicious computing positions ``m`` and of
    vacant honest ones ``v`` (as seen from ``replica``, :func:`vacant_seen_from`) under which
    ``good(m, v)`` holds (it falls as either grows): for every ``v``, at least ``v`` vacancies
    imply ``m <= m_max(v)``."""
    computing, malicious = enc.n_computing, enc.malicious_computing()
    vacant = vacant_seen_from(enc, replica)
    parts: list[Term] = []
    previous: int | None = None
    for v in range(len(vacant) + 1):
        m_max, low, high = -1, 1 - shift, computing
        while low <= high:
            mid = (low + high) // 2
            if good(mid, v):
                m_max, low = mid, mid + 1
            else:
                high = mid - 1
        if m_max == previous:
            continue
        previous = m_max
        bound: Term = True if m_max >= computing else False if m_max < 0 else at_most(malicious, m_max)
        parts.append(implies(at_least(vacant, v) if v else True, bound))
    return conj(parts)


def verifier_condition(enc: Encoding, good: Callable[[int], bool], replica: int | None) -> Term:
    """Without collusion, the condition under which ``good(v)`` holds with ``v`` vacant honest
    positions (as seen from ``replica``): only an empty set of verifiers (every other position
    vacant) can spoil it."""
    if not good(0):
        return False
    vacant = vacant_seen_from(enc, replica)
    everyone = enc.n_computing - 1
    if len(vacant) < everyone or good(everyone):
        return True
    return neg(at_least(vacant, everyone))
