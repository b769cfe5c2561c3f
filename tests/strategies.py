"""Hypothesis strategies shared by the property and fuzz tests.

* Fuzz budgets: :func:`budget` and :func:`fuzz_settings` scale a test's examples with the active
  Hypothesis profile (``ci`` or ``fuzz``, registered in ``tests/conftest.py``).
* Mutations of valid encodings: :func:`mutated_bytes` (bit flips, byte changes, insertion,
  deletion, truncation, duplication, splicing with other samples, swaps of two slices) and
  :func:`mutated_tree` (a JSON-like document with one part replaced, deleted, added or two parts
  swapped).
* JSON values: :data:`json_values` (no floats, as canonical JSON carries), with huge integers,
  lone surrogates and other edge cases.
* The spec language: raw bytes and text, mutated example specs, and random YAML-ish documents
  built from recursive strategies.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from stagewarden.spec import (
    CAPABILITIES,
    CHECK_SCHEMES,
    GUARANTEE_KINDS,
    RESPONSES,
    LoadedSpec,
    SpecDiagnostic,
    SpecError,
    example_names,
    example_text,
)

__all__ = [
    "EXAMPLE_DATA",
    "EXAMPLE_TEXTS",
    "budget",
    "dump_yaml",
    "fuzz_settings",
    "json_keys",
    "json_scalars",
    "json_values",
    "mutated_bytes",
    "mutated_tree",
    "mutated_example_data",
    "mutated_example_texts",
    "random_documents",
    "spec_keys",
    "spec_outcome",
    "yaml_scalars",
    "yaml_values",
]

# -- fuzz budgets ---------------------------------------------------------------------------------


def budget(share: float = 1.0) -> int:
    """Examples for one fuzz test: ``share`` times the active profile's ``max_examples`` (at least 1).

    Under the ``ci`` profile a share of 1 is 100 examples; under ``fuzz`` it is the number asked for
    with ``STAGEWARDEN_FUZZ_EXAMPLES``. Slow targets (whole run directories) take a share below 1.
    """
    return max(1, round(settings.default.max_examples * share))


def fuzz_settings(share: float = 1.0, **overrides: Any) -> settings:
    """Settings of a fuzz test: :func:`budget` examples, no Hypothesis deadline (every parser call
    runs under its own wall-clock limit instead, see ``tests/fuzz/fuzzing.py``), slow-data health
    checks off (``suppress_health_check`` in ``overrides`` adds to them)."""
    suppressed = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    options: dict[str, Any] = dict(max_examples=budget(share), deadline=None)
    options.update(overrides)
    options["suppress_health_check"] = [*suppressed, *overrides.get("suppress_health_check", ())]
    return settings(**options)


# -- mutations of valid encodings ------------------------------------------------------------------

_BYTE_OPS = ("flip", "set", "xor", "insert", "delete", "truncate", "duplicate", "splice", "swap")


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes, others: Sequence[bytes] = (), max_ops: int = 4) -> bytes:
    """``base`` with 1 to ``max_ops`` random edits.

    The edits: flip one bit, set or XOR one byte, insert 1 to 8 random bytes, delete 1 to 8 bytes,
    truncate, duplicate a slice in place, splice in a slice of ``base`` or of one of ``others``
    (another valid sample of the same format), swap two non-overlapping slices.
    """
    data = bytearray(base)
    donors = [bytes(base), *others]
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(_BYTE_OPS))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        width = draw(st.integers(1, 16))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "xor" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + min(width, 8)]
        elif op == "truncate":
            del data[at:]
        elif op == "duplicate":
            data[at:at] = data[at : at + width]
        elif op == "splice":
            donor = draw(st.sampled_from(donors))
            start = draw(st.integers(0, len(donor)))
            piece = donor[start : start + draw(st.integers(0, 64))]
            data[at : at + draw(st.integers(0, 64))] = piece
        elif op == "swap" and len(data) >= 2:
            a, b = sorted(draw(st.lists(st.integers(0, len(data)), min_size=2, max_size=2)))
            size = min(width, b - a, len(data) - b)
            if size > 0:
                data[a : a + size], data[b : b + size] = data[b : b + size], data[a : a + size]
    return bytes(data)


# -- JSON values and tree mutations ----------------------------------------------------------------

#: Object keys: short text, sometimes with control characters, non-ASCII and lone surrogates.
json_keys = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", "type", "format", "version", "step", "kind", "stage", "stages", "id", "\u0000", "a.b"]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
)

#: Scalars canonical JSON can carry (no floats), with edge cases: integers at and past 64 bits and
#: too large for a float, lone surrogates, NUL and other control characters, digits of other scripts.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70),
    st.integers(),
    st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400)]),
    st.text(max_size=16),
    st.text(st.characters(categories=["Nd", "Cs", "Cc", "Zs"]), max_size=6),
    st.sampled_from(["", "\x00", "00" * 32, "ff" * 32, "AA" * 32, "2026-01-01T00:00:00Z", "true", "null", "NaN"]),
)

#: Nested lists and objects of :data:`json_scalars`.
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(json_keys, children, max_size=4)),
    max_leaves=12,
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


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def _mutate_tree(
    draw: st.DrawFn, data: Any, values: st.SearchStrategy[Any], keys: st.SearchStrategy[Any], actions: Sequence[str]
) -> Any:
    """One random edit of ``data`` (a deep copy is changed, never ``data``)."""
    data = json.loads(json.dumps(data))
    paths = _paths(data)[1:]
    if not paths:
        return draw(values)
    path = draw(st.sampled_from(paths))
    parent = _get(data, path[:-1])
    action = draw(st.sampled_from(list(actions)))
    if action == "replace":
        parent[path[-1]] = draw(values)
    elif action == "delete":
        del parent[path[-1]]
    elif action == "swap":
        # Exchange the values at two paths, neither inside the other (a field swap).
        other = draw(st.sampled_from(paths))
        if other[: len(path)] != path and path[: len(other)] != other:
            other_parent = _get(data, other[:-1])
            parent[path[-1]], other_parent[other[-1]] = other_parent[other[-1]], parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(keys)] = draw(values)
    else:
        parent.append(draw(values))
    return data


@st.composite
def mutated_tree(
    draw: st.DrawFn,
    data: Any,
    values: st.SearchStrategy[Any] = json_values,
    keys: st.SearchStrategy[Any] = json_keys,
    max_edits: int = 3,
) -> Any:
    """``data`` (plain JSON-like data) after 1 to ``max_edits`` edits: a part replaced by a random
    value, deleted, a key or item added, or the values at two paths swapped."""
    for _ in range(draw(st.integers(1, max_edits))):
        data = _mutate_tree(draw, data, values, keys, ("replace", "delete", "add", "swap"))
    return data


# -- the spec language -----------------------------------------------------------------------------

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


@st.composite
def mutated_example_data(draw: st.DrawFn) -> Any:
    """A packaged example with one part replaced by a random value, deleted, or given an extra key."""
    data = EXAMPLE_DATA[draw(st.sampled_from(sorted(EXAMPLE_DATA)))]
    return _mutate_tree(draw, data, yaml_values, spec_keys, ("replace", "delete", "add"))


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


def _check_diagnostic(diagnostic: SpecDiagnostic, file: str, text: str | None) -> None:
    location = diagnostic.location
    assert location.file == file
    assert location.line >= 1
    assert location.column >= 1
    assert diagnostic.message.strip()
    assert diagnostic.message.isprintable()  # one line, control characters escaped
    if text is not None:
        # A location lies inside the document, or just past its end ("unexpected end of stream").
        # YAML also breaks lines at \r, NEL, U+2028 and U+2029; str.splitlines() knows them all.
        assert location.line <= len(text.splitlines()) + 1


def spec_outcome(load: Callable[[], LoadedSpec], file: str, text: str | None) -> LoadedSpec | SpecError:
    """Run ``load``; the only exception allowed is SpecError. Checks every diagnostic (located in
    ``file``, inside ``text`` when it is known, one printable line)."""
    try:
        loaded = load()
    except SpecError as exc:
        assert exc.diagnostics
        for diagnostic in exc.diagnostics:
            _check_diagnostic(diagnostic, file, text)
        assert str(exc) == "\n".join(str(d) for d in exc.diagnostics)
        return exc
    assert isinstance(loaded, LoadedSpec)
    for warning in loaded.warnings:
        _check_diagnostic(warning, file, text)
    return loaded
