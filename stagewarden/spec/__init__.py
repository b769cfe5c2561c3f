"""The threat-model spec language: typed models, loading with source locations, the JSON Schema
and the packaged example specs.
"""

from stagewarden.spec.errors import SourceLocation, SpecDiagnostic, SpecError
from stagewarden.spec.examples import example_names, example_text, load_example
from stagewarden.spec.loader import LoadedSpec, load_bytes, load_spec, load_text
from stagewarden.spec.model import (
    CAPABILITIES,
    CHECK_SCHEMES,
    GUARANTEE_KINDS,
    RESPONSES,
    TAMPERING_CAPABILITIES,
    Adversary,
    BoundedDamageGuarantee,
    DataIntegrityGuarantee,
    Defense,
    DetectionGuarantee,
    Faults,
    LivenessGuarantee,
    NoFramingGuarantee,
    OverheadGuarantee,
    RedundantNeighbourCheck,
    ReplicateCheck,
    RobustAggregationCheck,
    Spec,
    SpotCheck,
    StatisticalCheck,
    Topology,
    Trust,
    probability_fraction,
)
from stagewarden.spec.schema import json_schema
from stagewarden.spec.semantics import expand_workers, parse_worker

__all__ = [
    "CAPABILITIES",
    "CHECK_SCHEMES",
    "GUARANTEE_KINDS",
    "RESPONSES",
    "TAMPERING_CAPABILITIES",
    "Adversary",
    "BoundedDamageGuarantee",
    "DataIntegrityGuarantee",
    "Defense",
    "DetectionGuarantee",
    "Faults",
    "LivenessGuarantee",
    "LoadedSpec",
    "NoFramingGuarantee",
    "OverheadGuarantee",
    "RedundantNeighbourCheck",
    "ReplicateCheck",
    "RobustAggregationCheck",
    "SourceLocation",
    "Spec",
    "SpecDiagnostic",
    "SpecError",
    "SpotCheck",
    "StatisticalCheck",
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
