"""The JSON Schema of the spec format, for editors and external validators."""

from __future__ import annotations

from typing import Any

from stagewarden.spec.model import Spec

SCHEMA_ID = "https://stagewarden.readthedocs.io/schema/spec-v1.json"


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every valid spec document satisfies.

    The schema covers structure, types, ranges and enumerations; cross-references (stage
    indices against the topology, unique ids) are checked by the loader alone.
    """
    schema = Spec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "stagewarden threat-model spec (version 1)",
    }
