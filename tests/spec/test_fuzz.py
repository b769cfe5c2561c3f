"""Property tests: whatever the input, the loader returns a spec or raises SpecError with
well-formed diagnostics; it never raises anything else and never hangs."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from functools import partial

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stagewarden.spec import LoadedSpec, SpecDiagnostic, SpecError, load_bytes, load_text
from strategies import dump_yaml, mutated_example_data, mutated_example_texts, random_documents

FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


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


def _outcome(load: Callable[[], LoadedSpec], file: str, text: str | None) -> LoadedSpec | SpecError:
    """Run ``load``; the only exception allowed is SpecError. Checks every diagnostic."""
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
