"""The run settings a threat-model spec determines: how its topology and defence map onto the
runtime's :class:`~stagewarden.runtime.config.RunConfig` fields. ``stagewarden train --spec``,
``stagewarden replay`` and the conformance check all read a spec through this one mapping, so a run
trained from a spec is the run its conformance check expects."""

from __future__ import annotations

from typing import Any

from stagewarden.spec import LoadedSpec, RedundantNeighbourCheck, SpotCheck


def spec_settings(loaded: LoadedSpec) -> dict[str, Any]:
    """The run configuration a spec determines, as ``stagewarden train --spec`` maps it (without
    its flags): topology, receipts, attestation, the verification mode (a spot check first, else a
    redundant-neighbour check), the first response and the checkpoint interval."""
    spec = loaded.spec
    spot = [c for c in spec.defense.checks if isinstance(c, SpotCheck)]
    neighbour = [c for c in spec.defense.checks if isinstance(c, RedundantNeighbourCheck)]
    extra: dict[str, Any] = {}
    if spot:
        extra = {"verification": "spot_check", "spot_check_rate": spot[0].rate}
    elif neighbour:
        extra = {"verification": "redundant_neighbour", "input_via": neighbour[0].input_via}
    return {
        **extra,
        "stages": spec.topology.stages,
        "microbatches": spec.topology.microbatches,
        "standby": spec.topology.standby,
        "receipts": spec.defense.receipts,
        "attestation": spec.defense.attestation,
        "response": spec.defense.response[0],
        "checkpoint_every": spec.defense.checkpoint_every,
    }
