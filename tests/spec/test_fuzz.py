"""Property tests: whatever the input, the loader returns a spec or raises SpecError with
well-formed diagnostics; it never raises anything else and never hangs."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import partial

from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    dump_yaml,
    fuzz_settings,
    mutated_example_data,
    mutated_example_texts,
    random_documents,
)
from strategies import spec_outcome as _outcome

from stagewarden.spec import LoadedSpec, SpecError, load_bytes, load_text

FUZZ = fuzz_settings(2.0, deadline=timedelta(seconds=2))


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(raw: bytes) -> None:
    """Random bytes load or raise SpecError, as YAML and as JSON."""
    for file in ("fuzz.yaml", "fuzz.json"):
        _outcome(partial(load_bytes, raw, file), file, None)


@FUZZ
@given(st.text(max_size=2000))
def test_random_text(text: str) -> None:
    """Random text loads or raises SpecError."""
    _outcome(partial(load_text, text, "fuzz.yaml"), "fuzz.yaml", text)


@FUZZ
@given(mutated_example_texts())
def test_mutated_example_text(text: str) -> None:
    """An example with characters inserted, deleted or replaced loads or raises SpecError."""
    _outcome(partial(load_text, text, "fuzz.yaml"), "fuzz.yaml", text)


@FUZZ
@given(random_documents)
def test_random_yaml_documents(data: dict[str, object]) -> None:
    """Random nested documents, written as YAML and as JSON, load or raise SpecError."""
    as_yaml = dump_yaml(data)
    _outcome(partial(load_text, as_yaml, "fuzz.yaml"), "fuzz.yaml", as_yaml)
    as_json = json.dumps(data, indent=1)
    _outcome(partial(load_text, as_json, "fuzz.json"), "fuzz.json", as_json)


@FUZZ
@given(mutated_example_data())
def test_mutated_example_structure(data: object) -> None:
    """A structurally mutated example loads or raises SpecError, with the same outcome as YAML and JSON."""
    as_yaml = dump_yaml(data)
    as_json = json.dumps(data, indent=1)
    from_yaml = _outcome(partial(load_text, as_yaml, "fuzz.yaml"), "fuzz.yaml", as_yaml)
    from_json = _outcome(partial(load_text, as_json, "fuzz.json"), "fuzz.json", as_json)
    assert isinstance(from_yaml, SpecError) == isinstance(from_json, SpecError)
    if isinstance(from_yaml, LoadedSpec) and isinstance(from_json, LoadedSpec):
        assert from_yaml.spec == from_json.spec
    if isinstance(from_yaml, SpecError) and isinstance(from_json, SpecError):
        # The YAML writer sorts keys, so the diagnostics may come in another order.
        assert sorted(d.message for d in from_yaml.diagnostics) == sorted(d.message for d in from_json.diagnostics)
