"""The prover: one Z3 check per guarantee, a vacuity check before any "holds", minimal
counterexamples (fewest malicious workers, found with ``Optimize``) and minimal explanations
(deletion-minimised unsat cores over assumption literals).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import z3

from stagewarden.prover import trace as tr
from stagewarden.prover.encoding import CAPABILITY_KINDS, KINDS, SDC, Assumption, Effect, Encoding, ceil_half
from stagewarden.prover.explain import assumption_ref
from stagewarden.prover.probability import Prob, eject_damage, format_probability, rollback_damage, skip_damage
from stagewarden.prover.verdict import HOLDS, UNKNOWN, VACUOUS, VIOLATED, AssumptionRef, Figure, GuaranteeResult, Report
from stagewarden.spec import (
    TAMPERING_CAPABILITIES,
    BoundedDamageGuarantee,
    DataIntegrityGuarantee,
    DetectionGuarantee,
    LivenessGuarantee,
    LoadedSpec,
    NoFramingGuarantee,
    OverheadGuarantee,
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    SpotCheck,
    StatisticalCheck,
    probability_fraction,
)

#: Capability standing in for each unit kind when silent corruption hits an honest unit.
KIND_CAPABILITY = {"F": "tamper_activations", "B": "tamper_gradients", "U": "tamper_weights"}
#: Overhead cost constants (fractions of unprotected training).
RECEIPT_COMPUTE = Fraction(1, 100)
STATISTICAL_COMPUTE = Fraction(1, 100)


@dataclass(frozen=True)
class Limits:
    """Solver limits for one guarantee: wall-clock seconds and/or Z3's deterministic resource limit."""

    timeout: float | None = None
    rlimit: int | None = None


class SolverGaveUp(Exception):
    """Z3 answered unknown (time or resource limit, or incompleteness)."""


class Prover:
    """Checks the guarantees of one loaded spec."""

    def __init__(self, loaded: LoadedSpec, limits: Limits | None = None) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.limits = limits or Limits()
        self.enc = Encoding(loaded)
        self._deadline: float | None = None
        self._vacuity: list[Assumption] | None | bool = None
        self._term_cache: dict[tuple[str | None, Fraction], list[z3.BoolRef]] = {}

    # -- solver plumbing --------------------------------------------------------------------

    def _remaining_ms(self) -> int | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise SolverGaveUp(f"timeout: the per-guarantee limit of {self.limits.timeout} s was reached")
        return max(1, int(left * 1000))

    def _configure(self, solver: z3.Solver | z3.Optimize) -> None:
        ms = self._remaining_ms()
        if ms is not None:
            solver.set("timeout", ms)
        if self.limits.rlimit is not None:
            solver.set("rlimit", self.limits.rlimit)

    def _solver(self) -> z3.Solver:
        solver = z3.Solver()
        self._configure(solver)
        solver.add(self.enc.all_constraints())
        return solver

    def _check(self, goal: z3.BoolRef, literals: list[z3.BoolRef] | None = None) -> tuple[z3.CheckSatResult, z3.Solver]:
        solver = self._solver()
        solver.add(goal)
        result = solver.check(*(self.enc.literals() if literals is None else literals))
        if result == z3.unknown:
            raise SolverGaveUp(solver.reason_unknown())
        return result, solver

    def _sat(self, goal: z3.BoolRef) -> z3.ModelRef | None:
        result, solver = self._check(goal)
        return solver.model() if result == z3.sat else None

    def _minimal_core(self, goal: z3.BoolRef) -> list[Assumption]:
        """A minimal set of assumptions under which ``goal`` is unsatisfiable."""
        result, solver = self._check(goal)
        assert result == z3.unsat
        by_name = {str(a.literal): a for a in self.enc.assumptions}
        core = [by_name[str(lit)] for lit in solver.unsat_core()]
        index = 0
        while index < len(core):
            trial = core[:index] + core[index + 1 :]
            result, _ = self._check(goal, [a.literal for a in trial])
            if result == z3.unsat:
                core = trial
            else:
                index += 1
        return core

    def _minimal_model(self, goal: z3.BoolRef, extra_objective: list[z3.BoolRef] | None = None) -> z3.ModelRef:
        """A model of ``goal`` with the fewest malicious workers (then the fewest extra terms)."""
        opt = z3.Optimize()
        self._configure(opt)
        opt.add(self.enc.all_constraints())
        opt.add(self.enc.literals())
        opt.add(goal)
        opt.minimize(z3.Sum([z3.If(m, 1, 0) for m in self.enc.mal]))
        if extra_objective:
            opt.minimize(z3.Sum([z3.If(t, 1, 0) for t in extra_objective]))
        result = opt.check()
        if result != z3.sat:
            # Optimize may give up where the plain solver succeeded; fall back to any model.
            model = self._sat(goal)
            if model is None:
                raise SolverGaveUp(opt.reason_unknown())
            return model
        return opt.model()

    def _malicious(self, model: z3.ModelRef) -> list[int]:
        return [i for i, m in enumerate(self.enc.mal) if z3.is_true(model.eval(m, model_completion=True))]

    def _malicious_computing(self, model: z3.ModelRef) -> int:
        return sum(1 for i in self._malicious(model) if self.enc.world.workers[i].computing)

    # -- entry points ---------------------------------------------------------------------

    def vacuity(self) -> list[Assumption] | None:
        """None when an honest run is possible under the assumptions; otherwise the
        contradictory assumptions (a minimal core)."""
        if self._vacuity is None:
            honest_run = z3.And([z3.Not(m) for m in self.enc.mal] + [self.enc.crashes == 0])
            result, _ = self._check(honest_run)
            self._vacuity = False if result == z3.sat else self._minimal_core(honest_run)
        return None if self._vacuity is False else self._vacuity  # type: ignore[return-value]

    def check(self, guarantee_id: str) -> GuaranteeResult:
        """The verdict for one guarantee."""
        guarantee = next(g for g in self.spec.guarantees if g.id == guarantee_id)
        started = time.monotonic()
        self._deadline = started + self.limits.timeout if self.limits.timeout else None
        try:
            contradiction = self.vacuity()
            if contradiction is not None:
                result = GuaranteeResult(
                    guarantee.id, guarantee.kind, VACUOUS,
                    "the spec's assumptions contradict each other: no honest run is possible",
                    assumptions=[assumption_ref(self.enc, a) for a in contradiction],
                )
            else:
                handler: Callable[[object], GuaranteeResult] = {
                    DetectionGuarantee: self._detection,
                    BoundedDamageGuarantee: self._bounded_damage,
                    NoFramingGuarantee: self._no_framing,
                    LivenessGuarantee: self._liveness,
                    DataIntegrityGuarantee: self._data_integrity,
                    OverheadGuarantee: self._overhead,
                }[type(guarantee)]  # type: ignore[assignment]
                result = handler(guarantee)
        except SolverGaveUp as exc:
            reason = str(exc) or "unknown"
            result = GuaranteeResult(guarantee.id, guarantee.kind, UNKNOWN, f"the solver gave up: {reason}", reason=reason)
        finally:
            self._deadline = None
        result.seconds = time.monotonic() - started
        result.notes = self._notes(guarantee) + result.notes
        return result

    def _notes(self, guarantee: object) -> list[str]:
        notes = []
        if self.spec.trust.tee and not self.spec.defense.attestation and not isinstance(guarantee, OverheadGuarantee):
            notes.append("trust.tee is only a claim without defense.attestation: the prover treats those workers as untrusted")
        return notes

    # -- shared pieces ----------------------------------------------------------------------

    def _holds(self, guarantee: object, goal: z3.BoolRef, summary: str, **extra: object) -> GuaranteeResult:
        core = self._minimal_core(goal)
        return GuaranteeResult(
            guarantee.id, guarantee.kind, HOLDS, summary,  # type: ignore[attr-defined]
            assumptions=[assumption_ref(self.enc, a) for a in core], **extra,  # type: ignore[arg-type]
        )

    def _adversary_goal(self) -> z3.BoolRef:
        return z3.Or(self.enc.malicious_computing()) if self.enc.malicious_computing() else z3.BoolVal(False)

    def _trivial(self, guarantee: object, extra: z3.BoolRef | None = None) -> GuaranteeResult | None:
        """Holds trivially when no placement gives the adversary a computing worker."""
        goal = self._adversary_goal() if extra is None else z3.Or(self._adversary_goal(), extra)
        if self._sat(goal) is not None:
            return None
        result = self._holds(guarantee, goal, "holds trivially: the adversary can control no computing worker")
        result.trivially = True
        return result

    def _targets(self, capabilities: list[str]) -> list[tuple[int, str, str]]:
        out = []
        for c in capabilities:
            kinds = CAPABILITY_KINDS[c][:1] if c == "equivocate" else CAPABILITY_KINDS[c]
            for w in self.enc.world.computing:
                if c == "poison_data" and self.enc.world.workers[w].stage != 0:
                    continue
                out.extend((w, c, kind) for kind in kinds)
        return out

    def _level_goal(self, targets: list[tuple[int, str, str]], op: str, threshold: Fraction, sdc: bool) -> z3.BoolRef:
        enc = self.enc
        parts = [z3.And(enc.tamperable(w, c), enc.level(enc.effects(w, c, kind), op, threshold)) for w, c, kind in targets]
        if sdc:
            sdc_parts = [
                z3.And(z3.Not(enc.mal[w]), enc.level(enc.effects(w, KIND_CAPABILITY[k], k), op, threshold))
                for w in enc.world.computing for k in KINDS
            ]
            parts.append(z3.And(enc.sdc, z3.Or(sdc_parts)))
        return z3.Or(parts) if parts else z3.BoolVal(False)

    def _levels(self, targets: list[tuple[int, str, str]], sdc: bool) -> list[Fraction]:
        """Candidate detection levels, from the targets of replica 0 (replicas look alike)."""
        enc = self.enc
        sample = [(w, c, k) for w, c, k in targets if enc.world.workers[w].replica == 0]
        effects = [enc.effects(w, c, k) for w, c, k in sample]
        if sdc:
            effects += [enc.effects(w, KIND_CAPABILITY[k], k) for w in enc.world.computing if enc.world.workers[w].replica == 0 for k in KINDS]
        return enc.all_levels(effects, max(1, self.spec.malicious_budget))

    def _min_level(self, candidates: list[Fraction], goal_at: Callable[[Fraction], z3.BoolRef]) -> Fraction:
        """The smallest candidate level some placement reaches (binary search; the last
        candidate is known to be reachable)."""
        low, high = 0, len(candidates) - 1
        while low < high:
            mid = (low + high) // 2
            if self._sat(goal_at(candidates[mid])) is not None:
                high = mid
            else:
                low = mid + 1
        return candidates[low]

    def _describe_unit(self, model: z3.ModelRef, targets: list[tuple[int, str, str]], op: str, threshold: Fraction, sdc: bool) -> tuple[int, str, str, list[Effect], bool]:
        """The (worker, capability, kind) that reaches the level in ``model``."""
        enc = self.enc
        for w, c, kind in targets:
            if z3.is_true(model.eval(z3.And(enc.tamperable(w, c), enc.level(enc.effects(w, c, kind), op, threshold)), model_completion=True)):
                return w, c, kind, enc.effects(w, c, kind), False
        if sdc:
            for w in enc.world.computing:
                for k in KINDS:
                    effects = enc.effects(w, KIND_CAPABILITY[k], k)
                    if z3.is_true(model.eval(z3.And(z3.Not(enc.mal[w]), enc.level(effects, op, threshold)), model_completion=True)):
                        return w, SDC, k, effects, True
        raise AssertionError("the model reaches the level through no unit")

    # -- detection ------------------------------------------------------------------------

    def _detection(self, g: DetectionGuarantee) -> GuaranteeResult:
        spec, enc = self.spec, self.enc
        of = list(g.of) if g.of is not None else [c for c in TAMPERING_CAPABILITIES if c in spec.adversary.capabilities]
        bound = probability_fraction(g.probability)
        sdc_possible = self._sat(enc.sdc) is not None
        if bound == 0:
            return GuaranteeResult(g.id, g.kind, HOLDS, "holds: a detection probability of at least 0 needs no proof", trivially=True)
        trivial = self._trivial(g, enc.sdc)
        if trivial is not None:
            return trivial
        targets = self._targets(of)
        goal = self._level_goal(targets, "lt", bound, sdc_possible)
        levels = self._levels(targets, sdc_possible)
        if self._sat(goal) is None:
            result = self._holds(g, goal, f"holds: every tampered unit in scope is detected with probability >= {format_probability(float(bound))}")
            above = [lv for lv in levels if lv >= bound]
            if above and self._sat(self._level_goal(targets, "le", above[-1], sdc_possible)) is not None:
                worst = self._min_level(above, lambda lv: self._level_goal(targets, "le", lv, sdc_possible))
                result.figure = Figure("detection probability", float(worst), float(bound), ">=", exact=_exact(worst))
                result.summary += f" (worst case {format_probability(float(worst))})"
            return result
        candidates = [lv for lv in levels if lv < bound]
        worst = self._min_level(candidates, lambda lv: self._level_goal(targets, "le", lv, sdc_possible)) if candidates else bound
        level_goal = self._level_goal(targets, "le", worst, sdc_possible)
        model = self._minimal_model(level_goal)
        w, c, kind, effects, is_sdc = self._describe_unit(model, targets, "le", worst, sdc_possible)
        m = self._malicious_computing(model)
        d, rows = enc.effect_values(model, effects, m)
        trace = tr.detection_trace(self, model, g, w, c, kind, rows, d, bound, is_sdc)
        who = enc.world.workers[w].name
        what = "silent data corruption of" if is_sdc else f"{c} on"
        summary = (f"violated: {what} a {tr.KIND_NAMES[kind]} unit of worker {who} is detected with probability "
                   f"{format_probability(float(d))} < {format_probability(float(bound))}")
        return GuaranteeResult(g.id, g.kind, VIOLATED, summary, trace=trace,
                               figure=Figure("detection probability", float(d), float(bound), ">=", exact=_exact(d)))

    # -- bounded damage ---------------------------------------------------------------------

    def _unmasked(self) -> z3.BoolRef:
        enc, world = self.enc, self.enc.world
        masks = [i for i, c in enumerate(self.spec.defense.checks) if isinstance(c, RobustAggregationCheck)]
        if not masks:
            return z3.BoolVal(True)
        touched = [z3.Or([enc.mal[w] for s in range(world.stages) for w in world.slots[(s, r)]]) for r in range(world.replicas)]
        need = ceil_half(world.replicas)
        return z3.Or(z3.Not(enc.check_present[masks[0]]), z3.AtLeast(*touched, need))

    def _worker_kinds(self, w: int) -> list[tuple[str, str]]:
        """(capability, kind) pairs a malicious worker could tamper with."""
        out = []
        for c in TAMPERING_CAPABILITIES:
            if c == "poison_data" and self.enc.world.workers[w].stage != 0:
                continue
            for kind in CAPABILITY_KINDS[c]:
                out.append((c, kind))
        return out

    def _kind_level(self, w: int, kind: str, op: str, lv: Fraction) -> z3.BoolRef:
        enc = self.enc
        parts = [z3.And(enc.tamperable(w, c), enc.level(enc.effects(w, c, kind), op, lv)) for c, k in self._worker_kinds(w) if k == kind]
        return z3.Or(parts) if parts else z3.BoolVal(False)

    def _worker_level(self, w: int, op: str, lv: Fraction) -> z3.BoolRef:
        return z3.Or([self._kind_level(w, kind, op, lv) for kind in KINDS])

    def _damage_of(self, model: z3.ModelRef, k: int) -> tuple[Prob, list[dict[str, object]]]:
        """The exact damage probability of the placement in ``model`` (semantics page formulas)."""
        enc, spec = self.enc, self.spec
        horizon, micro = spec.topology.steps, spec.topology.microbatches
        per_step = {"F": micro, "B": micro, "U": 1}
        malicious = self._malicious(model)
        m = self._malicious_computing(model)
        unmasked = z3.is_true(model.eval(self._unmasked(), model_completion=True))
        rows: list[dict[str, object]] = []
        per_worker: list[tuple[Fraction, int, dict[str, Fraction]]] = []
        for w in malicious:
            if not enc.world.workers[w].computing:
                continue
            kind_d: dict[str, Fraction] = {}
            kind_cap: dict[str, str] = {}
            for c, kind in self._worker_kinds(w):
                if not z3.is_true(model.eval(enc.tamperable(w, c), model_completion=True)):
                    continue
                d, _ = enc.effect_values(model, enc.effects(w, c, kind), m)
                if kind not in kind_d or d < kind_d[kind]:
                    kind_d[kind], kind_cap[kind] = d, c
            if not kind_d:
                continue
            d_w = min(kind_d.values())
            units = horizon * sum(per_step[x] for x, d in kind_d.items() if d == d_w)
            per_worker.append((d_w, units, kind_d))
            rows.append({"worker": enc.world.workers[w].name, "detection": float(d_w), "units": units,
                         "kinds": {x: {"capability": kind_cap[x], "detection": float(d)} for x, d in kind_d.items()}})
        if not unmasked or not per_worker:
            return Prob.of(Fraction(0)), rows
        response = spec.defense.response
        if "rollback" in response:
            if sum(u for d, u, _ in per_worker if d < 1) < k + 1:
                return Prob.of(Fraction(0)), rows
            counts: dict[Fraction, int] = {}
            for d, _, _ in per_worker:
                counts[d] = counts.get(d, 0) + 1
            return rollback_damage(counts.items(), k), rows
        if "eject" in response:
            certain = sum(u for d, u, _ in per_worker if d == 0)
            counts = {}
            for d, _, _ in per_worker:
                if 0 < d < 1:
                    counts[d] = counts.get(d, 0) + 1
            return eject_damage(counts.items(), certain, k), rows
        trials = [(d, horizon * per_step[x]) for _, _, kind_d in per_worker for x, d in kind_d.items()]
        return skip_damage(trials, k), rows

    def _bounded_damage(self, g: BoundedDamageGuarantee) -> GuaranteeResult:
        enc, spec = self.enc, self.spec
        k = g.max_undetected
        bound = 1 - probability_fraction(g.probability)  # the damage probability may not exceed this
        if bound >= 1:
            return GuaranteeResult(g.id, g.kind, HOLDS, "holds: a probability of 0 needs no proof", trivially=True)
        trivial = self._trivial(g)
        if trivial is not None:
            return trivial
        computing = enc.world.computing
        unmasked = self._unmasked()
        any_damage = z3.And(unmasked, z3.Or([self._worker_level(w, "lt", Fraction(1)) for w in computing]))
        if self._sat(any_damage) is None:
            return self._holds(g, any_damage, "holds: every tampered unit is detected or masked, so none stays undetected",
                               figure=Figure("Pr[more than K undetected]", 0.0, float(bound), "<=", exact="0"))
        targets = [(w, c, kind) for w in computing for c, kind in self._worker_kinds(w)]
        levels = [lv for lv in self._levels(targets, False) if lv < 1]
        skip_mode = "rollback" not in spec.defense.response and "eject" not in spec.defense.response
        # Dominating counts: the most malicious workers that can reach each level (per kind in skip mode).
        groups: list[tuple[str | None, Fraction]] = [(kind, lv) for lv in levels for kind in (KINDS if skip_mode else (None,))]
        counts: dict[tuple[str | None, Fraction], int] = {}
        best_models: list[z3.ModelRef] = []
        for kind, lv in groups:
            n, model = self._maximise(self._level_terms(kind, lv), unmasked)
            counts[(kind, lv)] = n
            if model is not None:
                best_models.append(model)
        bound_prob = self._dominating_damage(counts, k)
        verdict_cmp = bound_prob.compare(bound)
        if verdict_cmp is not None and verdict_cmp <= 0:
            # Holds: no placement exceeds the per-level maxima; explain why they are bounded.
            exceed = z3.And(unmasked, z3.Or([z3.AtLeast(*self._level_terms(kind, lv), n + 1) for (kind, lv), n in counts.items()]))
            result = self._holds(g, exceed, f"holds: the best adversary leaves more than {k} undetected units with probability "
                                 f"at most {bound_prob} <= {format_probability(float(bound))}",
                                 figure=Figure("Pr[more than K undetected]", bound_prob.value, float(bound), "<=", exact=_exact(bound_prob.exact)))
            result.assumptions += [assumption_ref(enc, a) for a in enc.assumptions if a.key in self._response_keys() and a.key not in {x.key for x in result.assumptions}]
            return result
        # Find the worst concrete placement: the joint dominating one, else the best found.
        joint = z3.And(unmasked, *[z3.AtLeast(*self._level_terms(kind, lv), n) for (kind, lv), n in counts.items() if n > 0])
        candidates: list[z3.ModelRef] = []
        model = self._sat(joint)
        if model is not None:
            candidates.append(model)
        candidates += best_models
        best: tuple[Prob, list[dict[str, object]], z3.ModelRef] | None = None
        for cand in candidates:
            prob, rows = self._damage_of(cand, k)
            if best is None or prob.value > best[0].value:
                best = (prob, rows, cand)
        assert best is not None
        prob, rows, model = best
        cmp = prob.compare(bound)
        figure = Figure("Pr[more than K undetected]", prob.value, float(bound), "<=", exact=_exact(prob.exact))
        if cmp is None or cmp <= 0:
            return GuaranteeResult(g.id, g.kind, UNKNOWN,
                                   f"unknown: the dominating bound {bound_prob} exceeds {format_probability(float(bound))} but the worst placement found reaches only {prob}",
                                   figure=figure, reason="probability bound not tight")
        trace = tr.damage_trace(self, model, g, rows, prob, bound)
        summary = (f"violated: the adversary leaves more than {k} undetected units with probability {prob} > "
                   f"{format_probability(float(bound))}")
        return GuaranteeResult(g.id, g.kind, VIOLATED, summary, figure=figure, trace=trace)

    def _level_terms(self, kind: str | None, lv: Fraction) -> list[z3.BoolRef]:
        """Per computing worker: it is malicious and reaches detection level ``lv`` (on ``kind``,
        or on its weakest kind when ``kind`` is None)."""
        cache_key = (kind, lv)
        if cache_key not in self._term_cache:
            self._term_cache[cache_key] = [
                self._kind_level(w, kind, "le", lv) if kind else self._worker_level(w, "le", lv) for w in self.enc.world.computing
            ]
        return self._term_cache[cache_key]

    def _response_keys(self) -> set[str]:
        response = self.spec.defense.response
        for r in ("rollback", "eject"):
            if r in response:
                return {f"response:{r}"}
        return {f"response:{r}" for r in response}

    def _maximise(self, terms: list[z3.BoolRef], base: z3.BoolRef) -> tuple[int, z3.ModelRef | None]:
        """The largest number of ``terms`` that one placement makes true."""
        if self._sat(z3.And(base, z3.Or(terms))) is None:
            return 0, None
        opt = z3.Optimize()
        self._configure(opt)
        opt.add(self.enc.all_constraints())
        opt.add(self.enc.literals())
        opt.add(base)
        handle = opt.maximize(z3.Sum([z3.If(t, 1, 0) for t in terms]))
        if opt.check() != z3.sat:
            raise SolverGaveUp(opt.reason_unknown())
        return int(handle.value().as_long()), opt.model()

    def _dominating_damage(self, counts: dict[tuple[str | None, Fraction], int], k: int) -> Prob:
        """An upper bound on the damage: workers placed at the best levels the counts allow."""
        spec = self.spec
        horizon, micro = spec.topology.steps, spec.topology.microbatches
        per_step = {"F": micro, "B": micro, "U": 1}
        max_units = horizon * (2 * micro + 1)
        response = spec.defense.response
        if "rollback" in response or "eject" in response:
            vector = _dominating_vector({lv: n for (kind, lv), n in counts.items()})
            if not vector:
                return Prob.of(Fraction(0))
            grouped: dict[Fraction, int] = {}
            for lv in vector:
                grouped[lv] = grouped.get(lv, 0) + 1
            if "rollback" in response:
                if len(vector) * max_units < k + 1:
                    return Prob.of(Fraction(0))
                return rollback_damage(grouped.items(), k)
            certain = grouped.pop(Fraction(0), 0) * max_units
            return eject_damage(grouped.items(), certain, k)
        trials = []
        for kind in KINDS:
            vector = _dominating_vector({lv: n for (kd, lv), n in counts.items() if kd == kind})
            trials += [(lv, horizon * per_step[kind]) for lv in vector]
        return skip_damage(trials, k)

    # -- no framing ---------------------------------------------------------------------------

    def framing_mechanisms(self, replica: int | None = None) -> list[tuple[str, int, list[int], z3.BoolRef]]:
        """Every way an honest worker can be blamed: (mechanism, victim, attackers, condition).

        With ``replica`` only victims in that replica are listed.
        """
        enc, world, spec = self.enc, self.enc.world, self.spec
        out: list[tuple[str, int, list[int], z3.BoolRef]] = []
        no_referee = z3.Or(z3.Not(enc.receipts), z3.Not(enc.coord_trusted))
        replicas = range(world.replicas) if replica is None else [replica]
        computing = world.computing
        for i, check in enumerate(spec.defense.checks):
            present = enc.check_present[i]
            if isinstance(check, RedundantNeighbourCheck):
                for r in replicas:
                    for s in range(1, world.stages - 1):
                        up, checker = world.primary(s - 1, r), world.primary(s + 1, r)
                        for victim in world.slots[(s, r)]:
                            cond = z3.And(present, enc.via_up[i], enc.cap["equivocate"], z3.Not(enc.receipts), enc.mal[up], z3.Not(enc.mal[victim]))
                            out.append(("equivocation", victim, [up], cond))
                    for s in range(0, world.stages - 1):
                        checker = world.primary(s + 1, r)
                        for victim in world.slots[(s, r)]:
                            cond = z3.And(present, enc.cap["false_accuse"], no_referee, enc.mal[checker], z3.Not(enc.mal[victim]))
                            out.append(("false accusation", victim, [checker], cond))
            elif isinstance(check, SpotCheck):
                for r in replicas:
                    for s in range(world.stages):
                        for victim in world.slots[(s, r)]:
                            accusers = [a for a in computing if a != victim]
                            if not accusers:
                                continue
                            cond = z3.And(present, enc.vf[i]["peer"], enc.cap["false_accuse"], no_referee, z3.Not(enc.mal[victim]), z3.Or([enc.mal[a] for a in accusers]))
                            out.append(("false accusation by a peer verifier", victim, accusers, cond))
            elif isinstance(check, ReplicateCheck):
                k = check.factor
                need = ceil_half(k)
                tamper = z3.Or(enc.cap["tamper_activations"], enc.cap["tamper_gradients"], enc.cap["tamper_weights"])
                resolve_weak = z3.Or(z3.Not(enc.referee[i]), z3.Not(enc.coord_trusted))
                for r in replicas:
                    for s in range(world.stages):
                        members = world.slots[(s, r)]
                        for victim in members:
                            others = [o for o in members if o != victim]
                            agree = z3.BoolVal(True) if need <= 1 else enc.collusion
                            cond = z3.And(present, resolve_weak, tamper, z3.Not(enc.mal[victim]), z3.AtLeast(*[enc.mal[o] for o in others], need), agree)
                            out.append(("outvoting", victim, others, cond))
                            accuse = z3.And(present, enc.cap["false_accuse"], no_referee, z3.Not(enc.mal[victim]), z3.Or([enc.mal[o] for o in others]))
                            out.append(("false accusation by a replica", victim, others, accuse))
        roles = []
        for i, check in enumerate(spec.defense.checks):
            present = enc.check_present[i]
            if isinstance(check, RedundantNeighbourCheck):
                roles.append(z3.And(present, enc.via_coord[i]))
            elif isinstance(check, SpotCheck):
                roles.append(z3.And(present, enc.vf[i]["coordinator"]))
            elif isinstance(check, StatisticalCheck):
                roles.append(present)
            elif isinstance(check, ReplicateCheck):
                roles.append(z3.And(present, enc.referee[i]))
        if roles:
            anyone = z3.Or(enc.mal) if enc.mal else z3.BoolVal(False)
            for r in replicas:
                for s in range(world.stages):
                    for victim in world.slots[(s, r)]:
                        cond = z3.And(z3.Not(enc.coord_trusted), z3.Not(enc.receipts), anyone, z3.Not(enc.mal[victim]), z3.Or(roles))
                        out.append(("untrusted coordinator", victim, [], cond))
        return out

    def _no_framing(self, g: NoFramingGuarantee) -> GuaranteeResult:
        mechanisms = self.framing_mechanisms()
        goal = z3.Or([cond for *_, cond in mechanisms]) if mechanisms else z3.BoolVal(False)
        if self._sat(goal) is None:
            trivial = self._trivial(g)
            if trivial is not None:
                return trivial
            return self._holds(g, goal, "holds: no honest worker can be blamed")
        model = self._minimal_model(goal)
        mechanism, victim, attackers = next(
            (name, v, a) for name, v, a, cond in mechanisms if z3.is_true(model.eval(cond, model_completion=True))
        )
        trace = tr.framing_trace(self, model, g, mechanism, victim, attackers)
        name = self.enc.world.workers[victim].name
        return GuaranteeResult(g.id, g.kind, VIOLATED, f"violated: honest worker {name} can be blamed ({mechanism})", trace=trace)

    # -- liveness ---------------------------------------------------------------------------

    def _catchable(self, w: int, certain: bool) -> z3.BoolRef:
        """Worker ``w`` (as an occupant of its slot) can get a tampered unit detected, with
        probability > 0, or with certainty when ``certain``."""
        enc = self.enc
        parts = []
        for c, kind in self._worker_kinds(w):
            effects = enc.effects(w, c, kind, cooperative=True)
            reach = z3.Not(enc.level(effects, "lt", Fraction(1))) if certain else z3.Not(enc.level(effects, "le", Fraction(0)))
            parts.append(z3.And(enc.cap[c], reach))
        return z3.Or(parts) if parts else z3.BoolVal(False)

    def liveness_goal(self) -> tuple[z3.BoolRef, dict[str, object]]:
        """The liveness violation formula and its named parts (for the trace)."""
        enc, world = self.enc, self.enc.world
        eject, skip = enc.response["eject"], enc.response["skip_stage"]
        withhold = enc.cap["withhold"]
        computing = world.computing
        certain = z3.Or([z3.And(enc.mal[w], self._catchable(w, True)) for w in computing]) if computing else z3.BoolVal(False)
        withholder = z3.Or([z3.And(enc.mal[w], withhold) for w in computing]) if computing else z3.BoolVal(False)
        stall = z3.And(z3.Not(eject), z3.Not(skip), z3.Or(withholder, certain))
        removable = {w: z3.And(enc.mal[w], eject, z3.Or(withhold, self._catchable(w, False))) for w in computing}
        any_slot = z3.Or([self._catchable(world.primary(s, 0), False) for s in range(world.stages)])
        standby_removable = [z3.And(enc.mal[w], eject, z3.Or(withhold, any_slot)) for w in world.standby_workers]
        a = {r: z3.Sum([z3.If(removable[w], 1, 0) for s in range(world.stages) for w in world.slots[(s, r)]]) for r in range(world.replicas)}
        flexible = enc.crashes + (z3.Sum([z3.If(x, 1, 0) for x in standby_removable]) if standby_removable else 0)
        framed = {}
        for r in range(world.replicas):
            mechanisms = self.framing_mechanisms(r)
            framed[r] = z3.And(eject, z3.Or([cond for *_, cond in mechanisms])) if mechanisms else z3.BoolVal(False)
        any_framed = z3.Or(list(framed.values()))
        replicas = world.replicas
        with_framing = z3.And(any_framed, flexible >= z3.Sum([z3.If(z3.And(z3.Not(framed[r]), a[r] == 0), 1, 0) for r in range(replicas)]))
        without = z3.And(z3.Not(any_framed), z3.Sum(list(a.values())) + flexible >= replicas + enc.standby_n,
                         flexible >= z3.Sum([z3.If(a[r] == 0, 1, 0) for r in range(replicas)]))
        empty = z3.Or(with_framing, without)
        return z3.Or(stall, empty), {"stall": stall, "withholder": withholder, "certain": certain, "framed": framed,
                                     "removable": removable, "standby_removable": standby_removable, "empty": empty}

    def _liveness(self, g: LivenessGuarantee) -> GuaranteeResult:
        goal, parts = self.liveness_goal()
        if self._sat(goal) is None:
            return self._holds(g, goal, "holds: every stage of some replica keeps a worker and no step can be stalled forever")
        model = self._minimal_model(goal, extra_objective=[self.enc.crashes > 0])
        trace = tr.liveness_trace(self, model, g, parts)
        return GuaranteeResult(g.id, g.kind, VIOLATED, "violated: " + trace["#meta"]["description"], trace=trace)

    # -- data integrity ----------------------------------------------------------------------

    def _data_integrity(self, g: DataIntegrityGuarantee) -> GuaranteeResult:
        enc = self.enc
        targets = self._targets(["poison_data"])
        goal = self._level_goal(targets, "lt", Fraction(1), False)
        if self._sat(goal) is None:
            trivial = self._trivial(g)
            if trivial is not None:
                return trivial
            return self._holds(g, goal, "holds: every batch that reaches the model is proven against the committed data")
        model = self._minimal_model(goal)
        w, c, kind, effects, _ = self._describe_unit(model, targets, "lt", Fraction(1), False)
        d, rows = enc.effect_values(model, effects, self._malicious_computing(model))
        trace = tr.detection_trace(self, model, g, w, c, kind, rows, d, Fraction(1), False)
        return GuaranteeResult(g.id, g.kind, VIOLATED, f"violated: stage-0 worker {enc.world.workers[w].name} can feed a poisoned batch undetected", trace=trace)

    # -- overhead ------------------------------------------------------------------------------

    def overhead_costs(self) -> list[tuple[str, tuple[str | int, ...], Fraction, Fraction]]:
        """The cost model's items: (what, spec path, extra compute, extra memory)."""
        spec = self.spec
        stages = spec.topology.stages
        items: list[tuple[str, tuple[str | int, ...], Fraction, Fraction]] = []
        for i, check in enumerate(spec.defense.checks):
            path: tuple[str | int, ...] = ("defense", "checks", i)
            if isinstance(check, RedundantNeighbourCheck):
                share = Fraction(stages - 1, stages)
                items.append((f"redundant_neighbour: {stages - 1} of {stages} stages computed twice", path, share, share))
            elif isinstance(check, SpotCheck):
                items.append((f"spot_check re-executes {check.rate} of the units", path, Fraction(str(check.rate)), Fraction(0)))
            elif isinstance(check, ReplicateCheck):
                items.append((f"replicate: {check.factor} copies of every unit", path, Fraction(check.factor - 1), Fraction(check.factor - 1)))
            elif isinstance(check, StatisticalCheck):
                items.append(("statistical detector on messages", path, STATISTICAL_COMPUTE, Fraction(0)))
        if spec.defense.receipts:
            items.append(("receipts: hashing and signing every unit", ("defense", "receipts"), RECEIPT_COMPUTE, Fraction(0)))
        return items

    def _overhead(self, g: OverheadGuarantee) -> GuaranteeResult:
        items = self.overhead_costs()
        compute = sum((c for _, _, c, _ in items), Fraction(0))
        memory = sum((m for _, _, _, m in items), Fraction(0))
        limit_c = Fraction(str(g.max_compute))
        limit_m = Fraction(str(g.max_memory)) if g.max_memory is not None else None
        breakdown = [{"item": what, "location": _line_of(self.loaded, path), "compute": float(c), "memory": float(m)} for what, path, c, m in items]
        over_c = compute > limit_c
        over_m = limit_m is not None and memory > limit_m
        figure = Figure("extra compute", float(compute), float(limit_c), "<=", exact=_exact(compute))
        refs = [AssumptionRef(f"cost:{n}", f"{what}: +{float(c):.3g} compute, +{float(m):.3g} memory", _line_of(self.loaded, path)) for n, (what, path, c, m) in enumerate(items)]
        if over_c or over_m:
            which = []
            if over_c:
                which.append(f"extra compute {float(compute):.3g} > {float(limit_c):.3g}")
            if over_m:
                which.append(f"extra memory {float(memory):.3g} > {float(limit_m):.3g}")  # type: ignore[arg-type]
            trace = {"#meta": {"format": "stagewarden-trace", "version": tr.TRACE_VERSION, "guarantee": g.id, "kind": g.kind,
                               "description": "; ".join(which)},
                     "params": tr.params(self.spec), "malicious": [], "states": [], "costs": breakdown,
                     "outcome": {"compute": float(compute), "memory": float(memory), "max_compute": float(limit_c),
                                 "max_memory": None if limit_m is None else float(limit_m)}}
            return GuaranteeResult(g.id, g.kind, VIOLATED, "violated: " + "; ".join(which), figure=figure, trace=trace, assumptions=refs)
        summary = f"holds: extra compute {float(compute):.3g} <= {float(limit_c):.3g}"
        if limit_m is not None:
            summary += f", extra memory {float(memory):.3g} <= {float(limit_m):.3g}"
        return GuaranteeResult(g.id, g.kind, HOLDS, summary, figure=figure, assumptions=refs)


def _dominating_vector(counts: dict[Fraction, int]) -> list[Fraction]:
    """Levels of the dominating placement: ``n_l`` workers at levels <= l for each level l."""
    vector: list[Fraction] = []
    for lv in sorted(counts):
        while len(vector) < counts[lv]:
            vector.append(lv)
    return vector


def _line_of(loaded: LoadedSpec, path: tuple[str | int, ...]) -> str:
    location = loaded.source.value(path)
    return f"{location.file}:{location.line}"


def _exact(value: Fraction | None) -> str | None:
    if value is None:
        return None
    if value.denominator.bit_length() > 256:
        return None
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def verify(loaded: LoadedSpec, guarantee_ids: list[str] | None = None, limits: Limits | None = None,
           progress: Callable[[str, GuaranteeResult | None], None] | None = None) -> Report:
    """Check the guarantees of a loaded spec (all of them, or those in ``guarantee_ids``)."""
    prover = Prover(loaded, limits)
    ids = guarantee_ids or [g.id for g in loaded.spec.guarantees]
    results = []
    for gid in ids:
        if progress:
            progress(gid, None)
        result = prover.check(gid)
        results.append(result)
        if progress:
            progress(gid, result)
    return Report(loaded.file, loaded.spec.name, results)
