"""The run settings a threat-model spec determines: how its topology and defence map onto the
runtime's :class:`~stagewarden.runtime.config.RunConfig` fields. ``stagewarden train --spec``,
``stagewarden replay`` and the conformance check all read a spec through this one mapping, so a run
trained from a spec is the run its conformance check expects."""

from __future__ import annotations

from typing import Any

from stagewarden.spec import LoadedSpec, RedundantNeighbourCheck, ReplicateCheck, RobustAggregationCheck, SpotCheck


def spec_settings(loaded: LoadedSpec) -> dict[str, Any]:
    """The run configuration a spec determines, as ``stagewarden train --spec`` maps it (without
    its flags): topology (replicas included), receipts, attestation, the verification mode (a spot
    check first, else a redundant-neighbour check, else ``replicate`` with its factor and
    resolution), the aggregation rule of a ``robust_aggregation`` check, the first response and the
    checkpoint interval."""
    spec = loaded.spec
    checks = spec.defense.checks
    spot = [c for c in checks if isinstance(c, SpotCheck)]
    neighbour = [c for c in checks if isinstance(c, RedundantNeighbourCheck)]
    replicate = [c for c in checks if isinstance(c, ReplicateCheck)]
    robust = [c for c in checks if isinstance(c, RobustAggregationCheck)]
    extra: dict[str, Any] = {}
    if spot:
        extra = {"verification": "spot_check", "spot_check_rate": spot[0].rate}
    elif neighbour:
        extra = {"verification": "redundant_neighbour", "input_via": neighbour[0].input_via}
    elif replicate:
        extra = {
            "verification": "replicate",
            "replicate_factor": replicate[0].factor,
            "replicate_resolve": replicate[0].resolve,
        }
    if robust:
        extra["aggregation"] = robust[0].rule
    return {
        **extra,
        "replicas": spec.topology.replicas,
        "stages": spec.topology.stages,
        "microbatches": spec.topology.microbatches,
        "standby": spec.topology.standby,
        "receipts": spec.defense.receipts,
        "attestation": spec.defense.attestation,
        "response": spec.defense.response[0],
        "checkpoint_every": spec.defense.checkpoint_every,
    }
