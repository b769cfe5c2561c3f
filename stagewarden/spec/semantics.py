"""Whole-spec validation: references that must exist, values that must agree, and warnings for
settings that are legal but cannot have the effect a reader would expect.
"""

from __future__ import annotations

from stagewarden.spec import limits
from stagewarden.spec import model as m
from stagewarden.spec.errors import SpecDiagnostic
from stagewarden.spec.source import Path, SourceMap


def probability_free_percent(text: str) -> float:
    """The number in a percentage budget such as ``"10%"``."""
    return float(text.strip().rstrip("%").strip())


def parse_worker(ref: int | str) -> tuple[int, int | None]:
    """Split a trust entry into (stage, replica); replica is None for a whole stage."""
    if isinstance(ref, int):
        return ref, None
    stage, replica = ref.split(":")
    return int(stage), int(replica)


def expand_workers(refs: list[int | str], replicas: int) -> set[tuple[int, int]]:
    """The set of (stage, replica) workers a list of trust entries names."""
    out: set[tuple[int, int]] = set()
    for ref in refs:
        stage, replica = parse_worker(ref)
        if replica is None:
            out.update((stage, r) for r in range(replicas))
        else:
            out.add((stage, replica))
    return out


class _Collector:
    def __init__(self, source: SourceMap) -> None:
        self.source = source
        self.errors: list[SpecDiagnostic] = []
        self.warnings: list[SpecDiagnostic] = []

    def error(self, path: Path, message: str) -> None:
        self.errors.append(SpecDiagnostic(self.source.value(path), message))

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(SpecDiagnostic(self.source.value(path), message))


def _check_trust_list(c: _Collector, spec: m.Spec, key: str) -> None:
    stages, replicas = spec.topology.stages, spec.topology.replicas
    seen: dict[tuple[int, int | None], int] = {}
    for index, ref in enumerate(getattr(spec.trust, key)):
        path: Path = ("trust", key, index)
        stage, replica = parse_worker(ref)
        if stage >= stages:
            c.error(path, f"trust.{key}[{index}]: stage {stage} does not exist (stages are 0 to {stages - 1})")
            continue
        if replica is not None and replica >= replicas:
            c.error(path, f"trust.{key}[{index}]: replica {replica} does not exist (replicas are 0 to {replicas - 1})")
            continue
        if (stage, replica) in seen:
            c.error(path, f"trust.{key}[{index}]: {ref!r} is listed twice (first at index {seen[(stage, replica)]})")
            continue
        seen[(stage, replica)] = index
        if replica is not None and (stage, None) in seen:
            c.warn(path, f"trust.{key}[{index}]: worker {ref!r} is already covered by stage {stage}")


def _check_unique(c: _Collector, values: list[str], path: Path, what: str) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            c.error((*path, index), f"{what} '{value}' is listed twice (first at index {first[value]})")
        else:
            first[value] = index


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _worker_count_key(spec: m.Spec) -> Path:
    """The key to blame for too many workers: the largest of stages, replicas, the replication
    factor and standby (the first of them on a tie)."""
    topo = spec.topology
    sizes: list[tuple[int, Path]] = [
        (topo.stages, ("topology", "stages")),
        (topo.replicas, ("topology", "replicas")),
    ]
    for index, check in enumerate(spec.defense.checks):
        if isinstance(check, m.ReplicateCheck) and check.factor == spec.replication_factor:
            sizes.append((check.factor, ("defense", "checks", index, "factor")))
    sizes.append((topo.standby, ("topology", "standby")))
    return max(sizes, key=lambda size: size[0])[1]


def _check_worker_count(c: _Collector, spec: m.Spec) -> bool:
    """Whether the spec stays within :data:`~stagewarden.spec.limits.MAX_WORKERS` (reported if not)."""
    topo = spec.topology
    if spec.total_workers <= limits.MAX_WORKERS:
        return True
    copies = f" x {spec.replication_factor} copies" if spec.replication_factor > 1 else ""
    c.error(
        _worker_count_key(spec),
        f"the spec has {spec.total_workers} workers ({topo.stages} stages x {_count(topo.replicas, 'replica')}{copies}"
        f" + {topo.standby} standby); stagewarden supports at most {limits.MAX_WORKERS}",
    )
    return False


def check_semantics(spec: m.Spec, source: SourceMap) -> tuple[list[SpecDiagnostic], list[SpecDiagnostic]]:
    """Check what the models alone cannot; returns (errors, warnings)."""
    c = _Collector(source)
    if not _check_worker_count(c, spec):
        return c.errors, c.warnings  # the checks below enumerate workers
    topo, adv, defense = spec.topology, spec.adversary, spec.defense
    _check_trust_list(c, spec, "honest")
    _check_trust_list(c, spec, "tee")
    _check_unique(c, list(adv.capabilities), ("adversary", "capabilities"), "capability")
    _check_unique(c, list(defense.response), ("defense", "response"), "response")

    if isinstance(adv.max_malicious, int) and adv.max_malicious > spec.total_workers:
        c.error(
            ("adversary", "max_malicious"),
            f"adversary.max_malicious is {adv.max_malicious} but the topology has only "
            f"{spec.total_workers} workers ({topo.stages} stages x {topo.replicas} replicas"
            + (f" x {spec.replication_factor} copies" if spec.replication_factor > 1 else "")
            + f" + {topo.standby} standby)",
        )
    if (
        isinstance(adv.max_malicious, str)
        and spec.malicious_budget == 0
        and probability_free_percent(adv.max_malicious) > 0
    ):
        c.warn(
            ("adversary", "max_malicious"),
            f"adversary.max_malicious {adv.max_malicious!r} of {spec.total_workers} workers rounds down to 0: "
            "the adversary controls no worker",
        )
    if adv.faults.crash > spec.total_workers:
        c.error(
            ("adversary", "faults", "crash"),
            f"adversary.faults.crash is {adv.faults.crash} but there are only {spec.total_workers} workers",
        )

    honest = expand_workers(list(spec.trust.honest), topo.replicas) if not c.errors else set()
    if "poison_data" in adv.capabilities and not c.errors and all((0, r) in honest for r in range(topo.replicas)):
        c.warn(
            ("adversary", "capabilities", adv.capabilities.index("poison_data")),
            "poison_data can only be used by stage-0 workers, and every stage-0 worker is in trust.honest: "
            "the capability has no effect",
        )
    if adv.tee_compromise and not spec.trust.tee:
        c.warn(("adversary", "tee_compromise"), "adversary.tee_compromise is true but trust.tee is empty")
    if spec.trust.tee and not defense.attestation:
        c.warn(
            ("trust", "tee"),
            "trust.tee lists workers but defense.attestation is false: TEE claims count only with attestation",
        )

    single_use = ("redundant_neighbour", "replicate", "robust_aggregation")
    first_scheme: dict[str, int] = {}
    for index, check in enumerate(defense.checks):
        if check.scheme in single_use and check.scheme in first_scheme:
            c.error(
                ("defense", "checks", index, "scheme"),
                f"defense.checks[{index}]: only one '{check.scheme}' check is allowed "
                f"(first at index {first_scheme[check.scheme]})",
            )
        first_scheme.setdefault(check.scheme, index)
    for index, check in enumerate(defense.checks):
        path: Path = ("defense", "checks", index)
        if isinstance(check, m.SpotCheck) and not defense.receipts:
            c.warn(
                path,
                "spot_check without defense.receipts detects nothing: "
                "an uncommitted worker recomputes honestly when challenged",
            )
        if isinstance(check, m.SpotCheck) and check.verifier == "tee" and not spec.trust.tee:
            c.warn(
                path,
                "spot_check verifier 'tee' but trust.tee is empty: the verifier is a TEE outside the listed workers",
            )
        if isinstance(check, m.RobustAggregationCheck) and check.masks(topo.replicas) == 0:
            least = 5 if check.rule == "krum" else 3
            c.warn(
                path,
                f"robust_aggregation ({check.rule}) over {topo.replicas} replica(s) cannot outvote a corrupted replica "
                f"(needs at least {least})",
            )
        if isinstance(check, m.ReplicateCheck) and check.resolve == "referee" and spec.trust.coordinator == "untrusted":
            c.warn(
                path,
                "replicate with resolve 'referee' relies on the coordinator, which trust.coordinator says is untrusted",
            )

    if defense.checkpoint_every > topo.steps and "rollback" in defense.response:
        c.warn(
            ("defense", "checkpoint_every"),
            f"checkpoint_every ({defense.checkpoint_every}) exceeds the horizon ({topo.steps} steps): "
            "rollback can only return to the start",
        )

    ids: dict[str, int] = {}
    for index, guarantee in enumerate(spec.guarantees):
        path = ("guarantees", index)
        if guarantee.id in ids:
            c.error((*path, "id"), f"guarantee id '{guarantee.id}' is already used by guarantees[{ids[guarantee.id]}]")
        else:
            ids[guarantee.id] = index
        if isinstance(guarantee, m.DetectionGuarantee) and guarantee.of is not None:
            _check_unique(c, list(guarantee.of), (*path, "of"), "capability")
            for j, capability in enumerate(guarantee.of):
                if capability not in m.TAMPERING_CAPABILITIES:
                    c.error(
                        (*path, "of", j),
                        f"detection covers tampering capabilities ({', '.join(m.TAMPERING_CAPABILITIES)}); "
                        f"'{capability}' is not one",
                    )
                elif capability not in adv.capabilities:
                    c.warn(
                        (*path, "of", j),
                        f"'{capability}' is not among adversary.capabilities: "
                        "this part of the guarantee holds trivially",
                    )
        if isinstance(guarantee, m.DataIntegrityGuarantee) and "poison_data" not in adv.capabilities:
            c.warn(path, "data_integrity: the adversary lacks poison_data, so the guarantee holds trivially")
    return c.errors, c.warnings
