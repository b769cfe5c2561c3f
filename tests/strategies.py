"""Hypothesis strategies for the spec language: raw bytes and text, mutated example specs, and
random YAML-ish documents built from recursive strategies."""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import strategies as st
from ruamel.yaml import YAML
from stagewarden.spec import CAPABILITIES, CHECK_SCHEMES, GUARANTEE_KINDS, RESPONSES, example_names, example_text

__all__ = [
    "EXAMPLE_DATA",
    "EXAMPLE_TEXTS",
    "dump_yaml",
    "mutated_example_data",
    "mutated_example_texts",
    "random_documents",
    "spec_keys",
    "yaml_scalars",
    "yaml_values",
]

#: Source text of every packaged example, by name.
EXAMPLE_TEXTS: dict[str, str] = {name: example_text(name) for name in example_names()}
#: Every packaged example as plain data (what its YAML means).
EXAMPLE_DATA: dict[str, Any] = {
    name: json.loads(json.dumps(YAML(typ="safe", pure=True).load(text))) for name, text in EXAMPLE_TEXTS.items()
}

# Words a spec uses: keys, enumeration values and trust entries, so that random documents get
# past the first key check often enough to reach the deeper validation code.
_SPEC_WORDS = sorted(
    {
        "version",
        "name",
        "description",
        "topology",
        "stages",
        "replicas",
        "microbatches",
        "steps",
        "standby",
        "trust",
        "honest",
        "tee",
        "coordinator",
        "adversary",
        "max_malicious",
        "collusion",
        "tee_compromise",
        "capabilities",
        "faults",
        "crash",
        "silent_corruption",
        "defense",
        "receipts",
        "attestation",
        "data_commitment",
        "checks",
        "scheme",
        "input_via",
        "rate",
        "verifier",
        "factor",
        "resolve",
        "power",
        "min_deviation",
        "rule",
        "response",
        "checkpoint_every",
        "guarantees",
        "id",
        "kind",
        "of",
        "probability",
        "max_undetected",
        "max_compute",
        "max_memory",
        "trusted",
        "untrusted",
        "upstream",
        "checked_worker",
        "peer",
        "majority",
        "referee",
        "median",
        "trimmed_mean",
        "krum",
        *CAPABILITIES,
        *CHECK_SCHEMES,
        *GUARANTEE_KINDS,
        *RESPONSES,
    }
)

# Any text but NEL and the Unicode line and paragraph separators, which ruamel's YAML writer
# does not round-trip (it writes '\x85' in single quotes, and that reads back as a space).
_TEXT_CHARS = st.characters(exclude_characters="\x85\u2028\u2029")

#: Mapping keys: mostly spec keys, sometimes anything.
spec_keys = st.one_of(st.sampled_from(_SPEC_WORDS), st.text(_TEXT_CHARS, max_size=8))

#: Scalars of every type YAML and JSON produce, biased towards values a spec uses.
yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=30),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(_SPEC_WORDS),
    st.sampled_from(["0:0", "1:2", "3:1", "x:y", "10%", "150%", "1 - 1e-6", "1 - 2", "0.5", "", " "]),
    st.text(_TEXT_CHARS, max_size=12),
)

#: Nested lists and mappings of scalars.
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(spec_keys, children, max_size=5),
    ),
    max_leaves=15,
)


def dump_yaml(data: Any) -> str:
    """``data`` as block-style YAML text."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


#: Whole documents: a mapping of mostly top-level spec keys to random values.
random_documents = st.dictionaries(
    st.one_of(
        st.sampled_from(["version", "name", "topology", "trust", "adversary", "defense", "guarantees"]), spec_keys
    ),
    yaml_values,
    max_size=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``node``: mapping keys and list indices, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.extend(_paths(value, (*prefix, index)))
    return out


@st.composite
def mutated_example_data(draw: st.DrawFn) -> Any:
    """A packaged example with one part replaced by a random value, deleted, or given an extra key."""
    data = json.loads(json.dumps(EXAMPLE_DATA[draw(st.sampled_from(sorted(EXAMPLE_DATA)))]))
    path = draw(st.sampled_from(_paths(data)[1:]))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(yaml_values)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(spec_keys)] = draw(yaml_values)
    else:
        parent.append(draw(yaml_values))
    return data


@st.composite
def mutated_example_texts(draw: st.DrawFn) -> str:
    """A packaged example's source with a few random characters inserted, deleted or replaced."""
    text = EXAMPLE_TEXTS[draw(st.sampled_from(sorted(EXAMPLE_TEXTS)))]
    # Characters that matter to YAML, plus any character at all.
    chars = st.one_of(st.sampled_from(list(":-[]{}#&*!|>'\"%@`,? \t\n0123456789")), st.characters())
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        position = draw(st.integers(min_value=0, max_value=len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            text = text[:position] + draw(chars) + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + 1 :]
        else:
            text = text[:position] + draw(chars) + text[position + 1 :]
    return text
