"""Fuzzing spec loading (``stagewarden.spec.load_bytes`` / ``load_text``) at the byte level and by
splicing and swapping, as a complement of ``tests/spec/test_fuzz.py`` (which fuzzes random bytes,
random text, character edits and single structural edits of the packaged examples).

Here: the examples' bytes after bit flips, truncation, insertion, deletion, duplication and
splicing with another example, in YAML and in JSON; whole runs of lines spliced from one
example into another; several structural edits at once, two values swapped among them; other
encodings (byte order marks, UTF-16). Every outcome is a spec or a SpecError whose diagnostics
are located in the file and printable (``strategies.spec_outcome``).
"""

from __future__ import annotations

import json
from functools import partial

from fuzzing import CALL_SECONDS, bounded, mutated_json_text
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import (
    EXAMPLE_DATA,
    EXAMPLE_TEXTS,
    dump_yaml,
    fuzz_settings,
    mutated_bytes,
    mutated_tree,
    spec_keys,
    spec_outcome,
    yaml_values,
)

from stagewarden.spec import LoadedSpec, SpecError, load_bytes, load_text

NAMES = sorted(EXAMPLE_TEXTS)
YAML_BYTES = tuple(EXAMPLE_TEXTS[name].encode() for name in NAMES)
JSON_BYTES = tuple(json.dumps(EXAMPLE_DATA[name], indent=1).encode() for name in NAMES)


def _load_bytes(raw: bytes, file: str) -> LoadedSpec | SpecError:
    return spec_outcome(partial(bounded, load_bytes, raw, file, limit=CALL_SECONDS), file, None)


def _load_text(text: str, file: str) -> LoadedSpec | SpecError:
    return spec_outcome(partial(bounded, load_text, text, file, limit=CALL_SECONDS), file, text)


@fuzz_settings()
@given(
    st.one_of(
        st.sampled_from(YAML_BYTES).flatmap(lambda b: mutated_bytes(b, YAML_BYTES)).map(lambda b: (b, "fuzz.yaml")),
        st.sampled_from(JSON_BYTES).flatmap(lambda b: mutated_bytes(b, JSON_BYTES)).map(lambda b: (b, "fuzz.json")),
        st.sampled_from(JSON_BYTES).flatmap(lambda b: mutated_json_text(b, JSON_BYTES)).map(lambda b: (b, "fuzz.json")),
    )
)
@example((b"\xef\xbb\xbf" + YAML_BYTES[0], "fuzz.yaml"))  # UTF-8 byte order mark
@example((EXAMPLE_TEXTS[NAMES[0]].encode("utf-16"), "fuzz.yaml"))  # UTF-16 with its byte order mark
@example((YAML_BYTES[0][: len(YAML_BYTES[0]) // 2] + b"\xc3", "fuzz.yaml"))  # cut inside a UTF-8 sequence
def test_mutated_example_bytes(case: tuple[bytes, str]) -> None:
    """Byte-level edits of the examples (YAML and JSON) load or raise SpecError."""
    raw, file = case
    _load_bytes(raw, file)


@st.composite
def spliced_examples(draw: st.DrawFn) -> str:
    """An example with a run of lines from another example spliced in at a random line."""
    into = EXAMPLE_TEXTS[draw(st.sampled_from(NAMES))].splitlines(keepends=True)
    donor = EXAMPLE_TEXTS[draw(st.sampled_from(NAMES))].splitlines(keepends=True)
    start = draw(st.integers(0, len(donor)))
    piece = donor[start : start + draw(st.integers(1, 12))]
    at = draw(st.integers(0, len(into)))
    replace = draw(st.integers(0, 6))
    return "".join(into[:at] + piece + into[at + replace :])


@fuzz_settings(0.5)
@given(spliced_examples())
def test_spliced_examples(text: str) -> None:
    """Runs of lines of one example spliced into another load or raise located diagnostics."""
    _load_text(text, "fuzz.yaml")


@fuzz_settings(0.5)
@given(st.sampled_from(NAMES).flatmap(lambda n: mutated_tree(EXAMPLE_DATA[n], values=yaml_values, keys=spec_keys)))
def test_multiple_edits_and_swaps(data: object) -> None:
    """Several structural edits at once (values replaced, keys deleted or added, two values swapped)
    give the same outcome written as YAML and as JSON."""
    as_yaml, as_json = dump_yaml(data), json.dumps(data, indent=1)
    from_yaml = _load_text(as_yaml, "fuzz.yaml")
    from_json = _load_text(as_json, "fuzz.json")
    assert isinstance(from_yaml, SpecError) == isinstance(from_json, SpecError)
    if isinstance(from_yaml, LoadedSpec) and isinstance(from_json, LoadedSpec):
        assert from_yaml.spec == from_json.spec
