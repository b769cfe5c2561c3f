"""What a tampered unit is and what a check does to it: the unit kinds, the kinds each capability
acts on, and :class:`Effect`, one check's part in a unit's detection probability.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

from stagewarden.prover.fastz3 import Term
from stagewarden.spec import TAMPERING_CAPABILITIES

#: Unit kinds: forward, backward, update.
#: ``U`` is every update but the horizon's last, ``L`` the last update (which no later forward
#: pass shows to a ``redundant_neighbour`` checker).
KINDS = ("F", "B", "U", "L")
#: Which unit kinds each tampering capability acts on.
CAPABILITY_KINDS: dict[str, tuple[str, ...]] = {
    "tamper_activations": ("F",),
    "tamper_gradients": ("B",),
    "tamper_weights": ("U", "L"),
    "poison_data": ("F",),
    "equivocate": ("F", "B"),
}
#: Pseudo-capability for silent data corruption of an honest worker's unit.
SDC = "silent_corruption"
#: Capability whose rules silent corruption of each unit kind follows.
KIND_CAPABILITY = {"F": "tamper_activations", "B": "tamper_gradients", "U": "tamper_weights", "L": "tamper_weights"}
#: (capability, kind) pairs a malicious worker could tamper with, by whether it is in stage 0
#: (only stage 0 can poison data) and whether the horizon has updates before the last (with one
#: step the only update is the last one: there is no ``U`` unit).
_WORKER_KINDS = {
    (first, updates): tuple(
        (c, kind)
        for c in TAMPERING_CAPABILITIES
        if c != "poison_data" or first
        for kind in CAPABILITY_KINDS[c]
        if kind != "U" or updates
    )
    for first in (False, True)
    for updates in (False, True)
}


def worker_kinds_of(first_stage: bool, earlier_updates: bool) -> tuple[tuple[str, str], ...]:
    """(capability, kind) pairs a malicious occupant could tamper with: ``poison_data`` in the
    first stage only, and the ``U`` kind only where the horizon has updates before the last."""
    return _WORKER_KINDS[(first_stage, earlier_updates)]


#: Shared constants, so that the effect signatures of many workers hold the same objects.
ONE = Fraction(1)
ZERO = Fraction(0)


@dataclass(frozen=True)
class Effect:
    """A check that may catch a tampered unit: its name, detection value and when it is in force.

    ``value`` is None for a peer spot check, whose value depends on the placement
    (``rate`` and ``peer`` give what is needed to compute it).
    """

    label: str
    check: int | None
    value: Fraction | None
    expr: Term
    rate: Fraction = ZERO
    #: 1 when the unit's worker is honest (silent corruption): a peer verifier is then drawn
    #: from workers among which all ``m`` malicious ones are.
    shift: int = 0
    #: For a peer check, the replica of the checked unit when a vacancy can halt it (the
    #: vacancies its value counts depend on it: :func:`stagewarden.prover.peer.vacant_seen_from`).
    replica: int | None = None

    @property
    def peer(self) -> bool:
        """Whether the value depends on how many workers are malicious."""
        return self.value is None


@functools.lru_cache(maxsize=1024)
def spec_fraction(value: float) -> Fraction:
    """A spec probability (a float as written) as the exact fraction it denotes."""
    return Fraction(str(value))
