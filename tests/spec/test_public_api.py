"""The public API of stagewarden.spec: pinned so that additions and removals are deliberate."""

from __future__ import annotations

import importlib

import pytest

import stagewarden.spec

PUBLIC_NAMES = [
    "Adversary",
    "BoundedDamageGuarantee",
    "CAPABILITIES",
    "CHECK_SCHEMES",
    "DataIntegrityGuarantee",
    "Defense",
    "DetectionGuarantee",
    "Faults",
    "GUARANTEE_KINDS",
    "LivenessGuarantee",
    "LoadedSpec",
    "NoFramingGuarantee",
    "OverheadGuarantee",
    "RESPONSES",
    "RedundantNeighbourCheck",
    "ReplicateCheck",
    "RobustAggregationCheck",
    "SourceLocation",
    "Spec",
    "SpecDiagnostic",
    "SpecError",
    "SpotCheck",
    "StatisticalCheck",
    "TAMPERING_CAPABILITIES",
    "Topology",
    "Trust",
    "example_names",
    "example_text",
    "expand_workers",
    "json_schema",
    "load_bytes",
    "load_example",
    "load_spec",
    "load_text",
    "parse_worker",
    "probability_fraction",
]


def test_all_is_pinned() -> None:
    """stagewarden.spec.__all__ is exactly the pinned list (no duplicates)."""
    assert sorted(stagewarden.spec.__all__) == PUBLIC_NAMES
    assert len(set(stagewarden.spec.__all__)) == len(stagewarden.spec.__all__)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_is_importable(name: str) -> None:
    """Each public name imports from stagewarden.spec and is defined (not None)."""
    module = importlib.import_module("stagewarden.spec")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from stagewarden.spec import {name}", namespace)  # noqa: S102 - the import statement itself is under test
    assert namespace[name] is getattr(module, name)


def test_star_import_gives_exactly_the_public_names() -> None:
    """`from stagewarden.spec import *` binds the public names and nothing else."""
    namespace: dict[str, object] = {}
    exec("from stagewarden.spec import *", namespace)  # noqa: S102
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC_NAMES


def test_enumerations_agree_with_the_language_reference() -> None:
    """The exported enumerations list the capabilities, schemes, kinds and responses of the spec language."""
    assert stagewarden.spec.CAPABILITIES == (
        "tamper_activations",
        "tamper_gradients",
        "tamper_weights",
        "poison_data",
        "equivocate",
        "withhold",
        "false_accuse",
    )
    assert set(stagewarden.spec.TAMPERING_CAPABILITIES) == set(stagewarden.spec.CAPABILITIES) - {
        "withhold",
        "false_accuse",
    }
    assert stagewarden.spec.CHECK_SCHEMES == (
        "redundant_neighbour",
        "spot_check",
        "replicate",
        "statistical",
        "robust_aggregation",
    )
    assert stagewarden.spec.GUARANTEE_KINDS == (
        "detection",
        "bounded_damage",
        "no_framing",
        "liveness",
        "data_integrity",
        "overhead",
    )
    assert stagewarden.spec.RESPONSES == ("eject", "rollback", "skip_stage", "restart")
