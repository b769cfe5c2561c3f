"""The defence space of one spec for :func:`~stagewarden.prover.synthesis.synthesize`: the
candidate checks, responses and standby pools in cost order, the pruning by what each guarantee
kind reads (docs/synthesis.rst), and the verdicts of each candidate, cached.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, cast

from stagewarden.prover.defense_text import proof_file, spec_text_with
from stagewarden.prover.prover import Limits, Prover, verify
from stagewarden.prover.synthesis_result import Candidate, CheckKey
from stagewarden.prover.verdict import HOLDS, UNKNOWN, VACUOUS, VIOLATED, Report
from stagewarden.spec import (
    RESPONSES,
    Defense,
    LoadedSpec,
    OverheadGuarantee,
    Spec,
    load_text,
)
from stagewarden.spec.semantics import check_semantics

#: Sampling rates a synthesized ``spot_check`` may use.
SPOT_CHECK_RATES: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Replication factors a synthesized ``replicate`` check may use.
REPLICATION_FACTORS: tuple[int, ...] = (2, 3)
#: Most checks a synthesized defence combines.
MAX_CHECKS = 2


# Guarantee kinds whose verdict does not read defense.response (docs/semantics.rst: only
# bounded_damage and liveness mention the response); liveness alone reads the standby pool.
_RESPONSE_BLIND = frozenset({"overhead"})
_STANDBY_BLIND = frozenset({"overhead"})

#: Guarantees about single units and victims: the adversary only gains from eject and standby.
_MONOTONE = frozenset({"detection", "no_framing", "data_integrity"})


def _response_reading(kind: str, response: tuple[str, ...]) -> tuple[Any, ...] | None:
    """What a guarantee of ``kind`` reads of the response (docs/semantics.rst): every guarantee
    about the workers asks whether ``eject`` is in it (an ejection vacates a position a standby
    may enter); bounded_damage also whether ``rollback`` is (one attempt, or retries when the
    convict stays); liveness whether eject and skip_stage are (rollback and restart both redo
    the step)."""
    if kind in _RESPONSE_BLIND:
        return None
    if kind == "bounded_damage":
        return ("rollback" in response, "eject" in response)
    if kind == "liveness":
        return ("eject" in response, "skip_stage" in response)
    return ("eject" in response,)


def _check_key(check: dict[str, Any]) -> CheckKey:
    return tuple(check.items())


class _OutOfTime(Exception):
    """The whole search ran past ``max_seconds``."""


@dataclass
class _Outcome:
    """What one cost-ordered pass over the space found."""

    best: Candidate | None = None
    tried: int = 0
    unknown: int = 0
    last: Candidate | None = None  # the costliest candidate evaluated
    disagreements: int = 0  # candidates the search passed but the full proof did not


class _CostView:
    """The part of a :class:`Prover` that ``Prover.overhead_costs`` reads: the spec. Building a
    whole prover (its Z3 encoding) only to price a defence would dominate the search."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec


def cost_items(loaded: LoadedSpec) -> list[tuple[str, tuple[str | int, ...], Fraction, Fraction]]:
    """The ``overhead`` cost model's items for a spec (``Prover.overhead_costs``)."""
    items: list[tuple[str, tuple[str | int, ...], Fraction, Fraction]]
    try:
        items = cast(Any, Prover).overhead_costs(_CostView(loaded.spec))
    except AttributeError:  # the cost model came to need more of the prover
        items = Prover(loaded).overhead_costs()
    return items


class _Space:
    """The defence space of one spec, cost-ordered, and a cache of verdicts per candidate."""

    def __init__(
        self,
        loaded: LoadedSpec,
        limits: Limits | None,
        deadline: float | None,
        progress: Callable[[int, Candidate], None] | None,
    ) -> None:
        self.base = loaded
        self.proof_name = proof_file(loaded.file)
        self.spec = spec = loaded.spec
        self.limits = limits or Limits()
        self.deadline = deadline
        self.progress = progress
        self.guarantees = {g.id: g for g in spec.guarantees}
        self.order = [g.id for g in spec.guarantees]  # fail-first: the last failing guarantee leads
        adv, trust = spec.adversary, spec.trust
        # A percentage budget grows with the standby pool; a malicious standby worker matters to
        # no_framing only through an untrusted coordinator.
        self.standby_in_budget = isinstance(adv.max_malicious, str) or trust.coordinator == "untrusted"
        self.vary_response = any(g.kind not in _RESPONSE_BLIND for g in spec.guarantees)
        self.vary_standby = any(g.kind not in _STANDBY_BLIND for g in spec.guarantees)
        self.user = spec.defense
        self.user_checks = {_check_key(c.model_dump()) for c in spec.defense.checks}
        self.pool = self._pool()
        self.pool_index = {c: i for i, c in enumerate(self.pool)}
        self.classes = self._classes()
        self.cache: dict[tuple[Any, ...], str] = {}
        #: Verdicts of the guarantees that only gain from eject and standby workers, by the rest
        #: of their key: (eject, standby, verdict), for ``_implied``.
        self.settled: dict[tuple[Any, ...], list[tuple[bool, int, str]]] = {}
        self.valid: dict[tuple[Any, ...], bool] = {}
        self.evaluated: set[Candidate] = set()
        self.reports: dict[Candidate, tuple[LoadedSpec, Report]] = {}
        self.vacuous = False

    # -- the space ------------------------------------------------------------------------

    def _pool(self) -> list[CheckKey]:
        """Every check a candidate may use, the spec's own checks included."""
        spec = self.spec
        pool: list[dict[str, Any]] = [
            {"scheme": "redundant_neighbour", "input_via": v} for v in ("coordinator", "upstream", "checked_worker")
        ]
        pool += [
            {"scheme": "spot_check", "rate": r, "verifier": v}
            for r in SPOT_CHECK_RATES
            for v in ("coordinator", "tee", "peer")
        ]
        pool += [
            {"scheme": "replicate", "factor": k, "resolve": res}
            for k in REPLICATION_FACTORS
            for res in ("majority", "referee")
        ]
        pool += [{"scheme": "robust_aggregation", "rule": "median"}]
        # statistical's power and min_deviation describe a detector, not a setting the defender
        # picks: only the spec's own statistical checks are candidates.
        pool += [c.model_dump() for c in spec.defense.checks]
        out: list[CheckKey] = []
        for check in pool:
            key = _check_key(check)
            if key not in out:
                out.append(key)
        return out

    def _check_useful(self, check: dict[str, Any], receipts: bool) -> bool:
        """Structural pre-checks (docs/semantics.rst): a check that can detect and mask nothing
        in this spec is skipped, since the same candidate without it is cheaper or smaller."""
        spec = self.spec
        coordinator_trusted = spec.trust.coordinator == "trusted"
        scheme = check["scheme"]
        if scheme == "spot_check":
            if not receipts:
                return False  # an uncommitted worker recomputes honestly when challenged
            if check["verifier"] == "coordinator" and not coordinator_trusted:
                return False
            if check["verifier"] == "tee" and spec.adversary.tee_compromise:
                return False
        if scheme == "robust_aggregation":
            # Masks damage only, and only with at least three replicas.
            if spec.topology.replicas < 3 or not any(g.kind == "bounded_damage" for g in spec.guarantees):
                return False
        if scheme == "replicate" and check["resolve"] == "referee" and not coordinator_trusted:
            return False  # the same as majority
        return True

    def _classes(self) -> list[tuple[Fraction, Fraction, bool, tuple[CheckKey, ...]]]:
        """(compute, memory, receipts, checks) for every priced part of the space, cheapest first."""
        out = []
        for receipts in (False, True):
            for size in range(MAX_CHECKS + 1):
                for combo in itertools.combinations(self.pool, size):
                    schemes = [dict(c)["scheme"] for c in combo]
                    if len(set(schemes)) < len(schemes):
                        continue  # one check per scheme
                    if not all(self._check_useful(dict(c), receipts) for c in combo):
                        continue
                    defense = self.user.model_copy(
                        update={
                            "receipts": receipts,
                            "checks": Defense.model_validate({"checks": [dict(c) for c in combo]}).checks,
                        }
                    )
                    items = cost_items(
                        LoadedSpec(self.spec.model_copy(update={"defense": defense}), self.base.source, self.base.text)
                    )
                    compute = sum((c for _, _, c, _ in items), Fraction(0))
                    memory = sum((m for _, _, _, m in items), Fraction(0))
                    out.append((compute, memory, receipts, combo))
        out.sort(key=lambda c: (c[0], c[1]))
        return out

    def _variants(
        self, receipts: bool, checks: tuple[CheckKey, ...], compute: Fraction, memory: Fraction
    ) -> Iterator[Candidate]:
        """Every zero-cost completion of a priced class: attestation, data commitment, response
        and standby pool (each varied only where some guarantee can read it)."""
        spec = self.spec
        dicts = [dict(c) for c in checks]
        tee_verifier = any(c["scheme"] == "spot_check" and c["verifier"] == "tee" for c in dicts)
        attestations = [True] if tee_verifier else ([False, True] if spec.trust.tee else [False])
        poison = "poison_data" in spec.adversary.capabilities
        neighbour = any(c["scheme"] == "redundant_neighbour" for c in dicts)
        commitments = [False, True] if poison or neighbour else [False]
        if self.vary_response:
            responses = [tuple(r) for n in range(1, len(RESPONSES) + 1) for r in itertools.combinations(RESPONSES, n)]
        else:
            responses = [tuple(self.user.response)]
        if self.vary_standby:
            top = spec.topology.replicas + spec.malicious_budget + spec.adversary.faults.crash
            standbys = list(range(0, max(top, spec.topology.standby) + 1))
        else:
            standbys = [spec.topology.standby]
        for att, dc, response, standby in itertools.product(attestations, commitments, responses, standbys):
            yield Candidate(receipts, att, dc, checks, response, standby, self.user.checkpoint_every, compute, memory)

    def _order_key(self, cand: Candidate) -> tuple[Any, ...]:
        """Within one cost: fewer features, then closest to the spec's own defence, then a fixed order."""
        user = self.user
        distance = (
            int(cand.receipts != user.receipts)
            + int(cand.attestation != user.attestation)
            + int(cand.data_commitment != user.data_commitment)
            + len(set(cand.checks) ^ self.user_checks)
            + len(set(cand.response) ^ set(user.response))
            + int(cand.standby != self.spec.topology.standby)
        )
        canonical = (
            cand.receipts,
            cand.attestation,
            cand.data_commitment,
            [self.pool_index[c] for c in cand.checks],
            [RESPONSES.index(r) for r in cand.response],
            cand.standby,
        )
        return (cand.features, distance, canonical)

    def candidates(self, max_compute: Fraction | None, max_memory: Fraction | None) -> Iterator[Candidate]:
        """Candidates in increasing cost order, stopping where the compute cost passes
        ``max_compute`` (every later one does too) and skipping those over ``max_memory``."""
        for (compute, memory), group in itertools.groupby(self.classes, key=lambda c: (c[0], c[1])):
            if max_compute is not None and compute > max_compute:
                return
            if max_memory is not None and memory > max_memory:
                continue
            variants = [
                v for _, _, receipts, checks in group for v in self._variants(receipts, checks, compute, memory)
            ]
            variants.sort(key=self._order_key)
            for cand in variants:
                if self._is_valid(cand):
                    yield cand

    def spec_of(self, cand: Candidate) -> Spec:
        """The spec with the candidate's defence and standby pool (no source positions)."""
        defense = Defense.model_validate(cand.defense())
        topology = self.spec.topology.model_copy(update={"standby": cand.standby})
        return self.spec.model_copy(update={"defense": defense, "topology": topology})

    def _is_valid(self, cand: Candidate) -> bool:
        """Whether the loader would accept the candidate (e.g. a budget larger than the workers
        left once a replicate check or standby workers are gone is an error)."""
        # Only the workers (replication factor, standby pool) can make a candidate invalid: the
        # switches and the response are generated valid.
        key = (cand.checks, cand.standby)
        ok = self.valid.get(key)
        if ok is None:
            errors, _ = check_semantics(self.spec_of(cand), self.base.source)
            ok = self.valid[key] = not errors
        return ok

    # -- verdicts -------------------------------------------------------------------------

    def _key(self, cand: Candidate, gid: str) -> tuple[Any, ...]:
        """The parts of a candidate the guarantee's verdict reads (docs/semantics.rst)."""
        kind = self.guarantees[gid].kind
        standby: int | None = cand.standby if kind not in _STANDBY_BLIND or self.standby_in_budget else None
        if standby is not None and kind != "liveness" and not self.standby_in_budget:
            # A standby enters only a vacated position (a crash, or an ejection), and entries
            # beyond the budget are honest workers, which the adversary never needs.
            vacancies = self.spec.adversary.faults.crash > 0 or "eject" in cand.response
            standby = min(standby, self.spec.malicious_budget) if vacancies else 0
        checks = cand.checks
        if kind != "bounded_damage":  # robust_aggregation detects nothing; it only masks damage
            checks = tuple(c for c in checks if c[0] != ("scheme", "robust_aggregation"))
        return (
            gid,
            cand.receipts,
            cand.attestation,
            cand.data_commitment,
            checks,
            _response_reading(kind, cand.response),
            standby,
        )

    def _implied(self, key: tuple[Any, ...], kind: str) -> str:
        """A verdict that follows from one already known under a weaker or stronger adversary.

        For guarantees about single units and victims (``detection``, ``no_framing``,
        ``data_integrity``) the adversary only gains from ``eject`` (it vacates positions) and
        from a larger standby pool (more positions it can enter): a violation carries over to
        a stronger setting, and a proof to a weaker one."""
        standby = key[-1]
        if standby is None:
            return ""
        if kind in _RESPONSE_BLIND:
            smaller_violated = any(self.cache.get((*key[:-1], smaller)) == VIOLATED for smaller in range(standby))
            return "violated" if smaller_violated else ""
        if kind not in _MONOTONE:
            return ""
        (eject,) = key[-2]
        head = key[:-2]
        for other_eject, other_standby, verdict in self.settled.get(head, []):
            weaker = (not other_eject or eject) and other_standby <= standby
            stronger = (other_eject or not eject) and other_standby >= standby
            if verdict == VIOLATED and weaker:
                return VIOLATED
            if verdict == HOLDS and stronger:
                return HOLDS
        return ""

    def _within_bounds(self, cand: Candidate, g: OverheadGuarantee) -> bool:
        if cand.compute > Fraction(str(g.max_compute)):
            return False
        return g.max_memory is None or cand.memory <= Fraction(str(g.max_memory))

    def evaluate(self, cand: Candidate, goal: list[str]) -> tuple[str, str | None]:
        """(HOLDS, None) when every guarantee of ``goal`` holds under the candidate, else the
        verdict (VIOLATED or UNKNOWN) and the guarantee that failed (fail-first order)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _OutOfTime()
        self.evaluated.add(cand)
        prover: Prover | None = None
        unknown: str | None = None
        # Bounds first (no solver), then verdicts shared by every response, then the rest.
        tier = {
            gid: 0 if isinstance(g, OverheadGuarantee) else 1 if g.kind in _RESPONSE_BLIND else 2
            for gid, g in self.guarantees.items()
        }
        for gid in sorted((g for g in self.order if g in goal), key=lambda g: tier[g]):
            guarantee = self.guarantees[gid]
            if isinstance(guarantee, OverheadGuarantee):
                verdict = HOLDS if self._within_bounds(cand, guarantee) else VIOLATED
            else:
                key = self._key(cand, gid)
                verdict = self.cache.get(key, "") or self._implied(key, guarantee.kind)
                if not verdict:
                    if prover is None:
                        prover = Prover(LoadedSpec(self.spec_of(cand), self.base.source, self.base.text), self.limits)
                    verdict = self.cache[key] = prover.check(gid).verdict
                    if guarantee.kind in _MONOTONE and key[-1] is not None:
                        self.settled.setdefault(key[:-2], []).append((key[-2][0], key[-1], verdict))
            if verdict == HOLDS:
                continue
            if verdict == VACUOUS:
                self.vacuous = True
            if verdict == UNKNOWN:
                unknown = unknown or gid
                continue
            self.order.remove(gid)
            self.order.insert(0, gid)
            return verdict, gid
        return (UNKNOWN, unknown) if unknown else (HOLDS, None)

    def search(self, goal: list[str], confirm: bool = False) -> _Outcome:
        """The cheapest candidate under which every guarantee of ``goal`` holds. With
        ``confirm`` the winner must also pass a full ``verify`` of its YAML text."""
        bounds = [g for gid in goal if isinstance(g := self.guarantees[gid], OverheadGuarantee)]
        max_compute = min((Fraction(str(g.max_compute)) for g in bounds), default=None)
        max_memory = min((Fraction(str(g.max_memory)) for g in bounds if g.max_memory is not None), default=None)
        outcome = _Outcome()
        for cand in self.candidates(max_compute, max_memory):
            outcome.tried += 1
            outcome.last = cand
            if self.progress is not None:
                self.progress(outcome.tried, cand)
            verdict, _ = self.evaluate(cand, goal)
            if verdict == UNKNOWN:
                outcome.unknown += 1
            if verdict != HOLDS:
                continue
            if confirm and self.proof(cand)[1].exit_code != 0:
                # The full proof did not confirm it (a solver limit, or a shortcut of the search
                # that the prover no longer agrees with): keep looking.
                outcome.disagreements += 1
                continue
            outcome.best = cand
            return outcome
        return outcome

    # -- the candidate as a spec file -------------------------------------------------------

    def proof(self, cand: Candidate) -> tuple[LoadedSpec, Report]:
        """The candidate written into the spec's text, loaded (so proofs cite its lines) and verified."""
        cached = self.reports.get(cand)
        if cached is None:
            text = spec_text_with(self.base, cand.defense(), cand.standby)
            loaded = load_text(text, self.proof_name)
            cached = self.reports[cand] = (loaded, verify(loaded, limits=self.limits))
        return cached
