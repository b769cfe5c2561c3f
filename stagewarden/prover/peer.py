"""The value of a ``spot_check`` whose verifier is a peer (docs/semantics.rst, ``spot_check``):
the verifier is drawn from the other positions that are occupied when the unit is checked, so a
vacancy (a crash, an ejection) removes a possible honest verifier, and with collusion every
malicious occupant covers.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import z3

from stagewarden.prover.fastz3 import Term, at_least, at_most, conj, implies, neg, to_z3

if TYPE_CHECKING:
    from stagewarden.prover.encoding import Encoding

_VACANT: WeakKeyDictionary[Encoding, list[z3.BoolRef]] = WeakKeyDictionary()


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


def vacant_honest(enc: Encoding) -> list[z3.BoolRef]:
    """Per computing position that can end a run vacant without a malicious occupant ever
    there: it is vacant then (a malicious occupant covers rather than leaves: at the moment the
    adversary picks, it is present)."""
    known = _VACANT.get(enc)
    if known is None:
        occupancy = enc.occupancy
        known = []
        if occupancy.active:
            for x in enc.world.computing:
                term = conj([neg(occupancy.occupied_malicious[x]), neg(occupancy.present[x])])
                if term is not False:
                    known.append(to_z3(term))
        _VACANT[enc] = known
    return known


def colluding_condition(enc: Encoding, shift: int, good: Callable[[int, int], bool]) -> Term:
    """With collusion, the condition on the number of malicious computing positions ``m`` and of
    vacant honest ones ``v`` under which ``good(m, v)`` holds (it falls as either grows): for every
    ``v``, at least ``v`` vacancies imply ``m <= m_max(v)``."""
    computing, malicious = enc.n_computing, enc.malicious_computing()
    vacant = vacant_honest(enc)
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


def verifier_condition(enc: Encoding, good: Callable[[int], bool]) -> Term:
    """Without collusion, the condition under which ``good(v)`` holds with ``v`` vacant honest
    positions: only an empty set of verifiers (every other position vacant) can spoil it."""
    if not good(0):
        return False
    vacant = vacant_honest(enc)
    everyone = enc.n_computing - 1
    if len(vacant) < everyone or good(everyone):
        return True
    return neg(at_least(vacant, everyone))
