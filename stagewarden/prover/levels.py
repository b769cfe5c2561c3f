"""Detection-level formulas: Z3 terms saying that a unit's detection probability is below (or
at most) a threshold, given which checks are in force and the placement a peer check reads; the
values those checks give in a model; and every level a unit can have, for worst-case searches.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import TYPE_CHECKING, cast

import z3

from stagewarden.prover.fastz3 import ModelView, Term, conj, disj, holds_in, neg
from stagewarden.prover.peer import (
    colluding_condition,
    peer_value,
    vacant_honest,
    vacant_seen_from,
    verifier_condition,
)
from stagewarden.prover.probability import detection_probability
from stagewarden.prover.units import Effect
from stagewarden.spec import Spec

if TYPE_CHECKING:
    from stagewarden.prover.encoding import Encoding

#: The checks on a unit, one per effect: (fixed detection value, or None for a peer check whose
#: value depends on how many workers are malicious; the peer's rate; its shift; its replica).
_Signature = tuple[tuple[Fraction | None, Fraction, int, int | None], ...]
#: A set of effects that makes a unit good: (the chosen fixed effects, the peer effect that
#: completes them or None, the condition under which that peer does).
_GoodSet = tuple[tuple[int, ...], tuple[int, ...], Term | None]


class DetectionLevels:
    """The level formulas of an :class:`~stagewarden.prover.encoding.Encoding` (a base class of
    it), cached by the values of a unit's effects, since many workers share them."""

    spec: Spec
    n_computing: int
    collusion: Term

    def _init_levels(self) -> None:
        self._good_cache: dict[object, list[_GoodSet]] = {}
        self._signatures: dict[int, tuple[int, _Signature]] = {}
        self._signature_ids: dict[tuple[tuple[int, int, int, int | None], ...], tuple[int, _Signature]] = {}
        self._signature_numbers: dict[_Signature, int] = {}
        self._templates: dict[tuple[int, str, int, int], list[_GoodSet]] = {}
        self._levels: dict[tuple[int, str, int, int], Term] = {}

    @property
    def _encoding(self) -> Encoding:
        return cast("Encoding", self)

    def peer_value(self, rate: Fraction, malicious: int, colluding: bool, vacant: int = 0) -> Fraction:
        """Detection value of a peer spot check with ``malicious`` malicious computing workers
        and ``vacant`` other positions vacant (:mod:`stagewarden.prover.peer`)."""
        return peer_value(self.n_computing, rate, malicious, colluding, vacant)

    def level(self, effects: list[Effect], op: str, threshold: Fraction) -> Term:
        """Formula: the unit's detection probability is ``< threshold`` (op "lt") or
        ``<= threshold`` (op "le"), given which effects are in force."""
        level_key = (id(effects), op, threshold.numerator, threshold.denominator)
        known = self._levels.get(level_key)
        if known is not None:
            return known
        entry = self._signatures.get(id(effects))
        if entry is None:
            # Hashing fractions is slow; most workers share the very same value objects, so
            # look the signature up by object identity first (the entry keeps them alive).
            by_identity = tuple((id(e.value), id(e.rate), e.shift, e.replica) for e in effects)
            entry = self._signature_ids.get(by_identity)
            if entry is None:
                signature = tuple((e.value, e.rate, e.shift, e.replica) for e in effects)
                number = self._signature_numbers.setdefault(signature, len(self._signature_numbers))
                entry = self._signature_ids[by_identity] = (number, signature)
            self._signatures[id(effects)] = entry
        key = (entry[0], op, threshold.numerator, threshold.denominator)
        templates = self._templates.get(key)
        if templates is None:
            templates = self._templates[key] = self._good_sets(entry[1], op, threshold)
        clauses: list[Term] = []
        for chosen, peer_indices, peer_condition in templates:
            parts: list[Term] = [effects[j].expr for j in chosen]
            if peer_indices:
                parts += [effects[j].expr for j in peer_indices]
                parts.append(True if peer_condition is None else peer_condition)
            clauses.append(neg(conj(parts)))
        # Effect lists live as long as the encoding (cached in ``_effects``), so ids are stable.
        result = self._levels[level_key] = conj(clauses)
        return result

    def _good_sets(self, signature: _Signature, op: str, threshold: Fraction) -> list[_GoodSet]:
        """The minimal sets of effects that make a unit good (detection not below the threshold),
        for effects with the given values; cached, since many workers share a signature."""
        key = (signature, op, threshold)
        cached = self._good_cache.get(key)
        if cached is not None:
            return cached

        def bad(d: Fraction) -> bool:
            return d < threshold if op == "lt" else d <= threshold

        fixed_values = {j: entry[0] for j, entry in enumerate(signature) if entry[0] is not None}
        fixed = list(fixed_values)
        peers = [j for j, entry in enumerate(signature) if entry[0] is None]
        out: list[_GoodSet] = []
        minimal_good: list[frozenset[int]] = []
        for size in range(len(fixed) + 1):
            for combo in itertools.combinations(fixed, size):
                chosen = frozenset(combo)
                if any(g <= chosen for g in minimal_good):
                    continue
                d = detection_probability(fixed_values[j] for j in combo)
                if not bad(d):
                    minimal_good.append(chosen)
                    out.append((combo, (), None))
                    continue
                # Peer checks of one unit share its replica, shift and the placement they read,
                # so any set of them that is in force together counts at once.
                for count in range(1, len(peers) + 1):
                    for together in itertools.combinations(peers, count):
                        rates = [signature[j][1] for j in together]
                        _, _, shift, replica = signature[together[0]]
                        condition = self._peer_good(rates, shift, replica, d, bad)
                        if condition is not None:
                            out.append((combo, together, condition))
        self._good_cache[key] = out
        return out

    def _peer_good(
        self,
        rates: list[Fraction],
        shift: int,
        replica: int | None,
        d_others: Fraction,
        bad: Callable[[Fraction], bool],
    ) -> Term | None:
        """Condition (on collusion, the number of malicious workers and the vacancies seen from
        ``replica``) under which adding peer checks of the given rates to checks of combined
        value ``d_others`` makes the unit good; None if never."""

        def good_at(m: int, colluding: bool, vacant: int = 0) -> bool:
            miss = 1 - d_others
            for rate in rates:
                miss *= 1 - self.peer_value(rate, m + shift, colluding, vacant)
            return not bad(1 - miss)

        enc = self._encoding
        conditions: list[Term] = [
            conj([neg(self.collusion), verifier_condition(enc, lambda v: good_at(1, False, v), replica)])
        ]
        # With collusion the value falls as m (malicious computing workers, the unit's own worker
        # included when it is malicious) and the vacant honest positions grow.
        conditions.append(
            conj([self.collusion, colluding_condition(enc, shift, lambda m, v: good_at(m, True, v), replica)])
        )
        combined = disj(conditions)
        return None if combined is False else combined

    def effect_values(
        self, model: z3.ModelRef | ModelView, effects: Iterable[Effect], malicious: int
    ) -> tuple[Fraction, list[tuple[Effect, bool, Fraction]]]:
        """Evaluate the effects in a model: the unit's detection probability and each effect's
        state and value."""
        colluding = holds_in(model, self.collusion)
        rows = []
        values = []
        for e in effects:
            on = holds_in(model, e.expr)
            if e.value is not None:
                value = e.value
            else:
                vacant = sum(1 for t in vacant_seen_from(self._encoding, e.replica) if holds_in(model, t))
                value = self.peer_value(e.rate, malicious + e.shift, colluding, vacant)
            rows.append((e, on, value))
            if on:
                values.append(value)
        return detection_probability(values), rows

    def _possible(self, effect: Effect) -> bool:
        """Whether an effect can be in force under the spec as written (a spot check's effect
        for a verifier other than the one the spec names cannot)."""
        if effect.check is None or not effect.label.startswith("spot_check"):
            return True
        check = self.spec.defense.checks[effect.check]
        is_peer = getattr(check, "verifier", None) == "peer"
        return is_peer == effect.label.endswith("(peer)")

    def all_levels(self, effects_list: Iterable[list[Effect]], max_malicious: int) -> list[Fraction]:
        """Every detection probability a unit can have, sorted (for the worst-case search)."""
        levels: set[Fraction] = set()
        seen: set[tuple[object, ...]] = set()
        for effects in effects_list:
            effects = [e for e in effects if self._possible(e)]
            fixed = [e.value for e in effects if e.value is not None]
            peers = [e for e in effects if e.peer]
            # Units of many workers share their values: each distinct set adds its levels once.
            key = (*fixed, None, *((p.rate, p.shift) for p in peers))
            if key in seen:
                continue
            seen.add(key)
            for size in range(len(fixed) + 1):
                for combo in itertools.combinations(fixed, size):
                    base = detection_probability(combo)
                    levels.add(base)
                    for count in range(1, len(peers) + 1):
                        for together in itertools.combinations(peers, count):
                            levels.update(self._peer_levels(base, together, max_malicious))
        return sorted(levels)

    def _peer_levels(self, base: Fraction, peers: tuple[Effect, ...], max_malicious: int) -> set[Fraction]:
        """The detection probabilities of checks of combined value ``base`` with the ``peers``
        in force too, over the placements they can read."""
        out: set[Fraction] = set()
        for m in _sample_counts(max_malicious):
            for colluding in (False, True):
                for vacant in [0, *_sample_counts(len(vacant_honest(self._encoding)))]:
                    miss = 1 - base
                    for peer in peers:
                        miss *= 1 - self.peer_value(peer.rate, m + peer.shift, colluding, vacant)
                    out.add(1 - miss)
        return out


def _sample_counts(limit: int) -> list[int]:
    if limit <= 64:
        return list(range(1, max(limit, 1) + 1))
    step = max(1, limit // 64)
    return sorted(set(list(range(1, 65)) + list(range(1, limit + 1, step)) + [limit]))
