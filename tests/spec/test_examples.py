"""The packaged example specs: each loads by name, by path and as JSON, and the JSON Schema
accepts every one of them (and rejects broken documents)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from stagewarden.cli import cli
from stagewarden.spec import SpecError, example_names, example_text, json_schema, load_example, load_spec, load_text

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "stagewarden" / "spec" / "examples"
NAMES = example_names()


def _data(name: str) -> Any:
    """What the example's YAML means, as plain JSON-compatible data."""
    return YAML(typ="safe", pure=True).load(example_text(name))


def _cli_schema() -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    schema: dict[str, Any] = json.loads(result.stdout)
    return schema


def test_example_names_match_the_packaged_files() -> None:
    """example_names() lists exactly the YAML files in spec/examples, sorted."""
    assert NAMES == sorted(NAMES)
    assert NAMES == sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))
    assert "paper-redundant-neighbour" in NAMES
    assert "demo" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_by_name(name: str) -> None:
    """load_example(NAME) gives a spec whose diagnostics name it example:NAME."""
    loaded = load_example(name)
    assert loaded.file == f"example:{name}"
    assert loaded.text == example_text(name)
    assert all(w.location.file == f"example:{name}" for w in loaded.warnings)


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_by_path(name: str) -> None:
    """The example's file loads with load_spec to the same spec, under its own path."""
    path = EXAMPLES_DIR / f"{name}.yaml"
    loaded = load_spec(path)
    assert loaded.file == str(path)
    assert loaded.spec == load_example(name).spec
    assert [w.message for w in loaded.warnings] == [w.message for w in load_example(name).warnings]


@pytest.mark.parametrize("name", NAMES)
def test_example_as_json_loads_to_an_equal_spec(name: str, tmp_path: Path) -> None:
    """The example's data written as JSON (x.json) loads to an equal spec."""
    path = tmp_path / "x.json"
    path.write_text(json.dumps(_data(name), indent=2), encoding="utf-8")
    assert load_spec(path).spec == load_example(name).spec


@pytest.mark.parametrize("name", NAMES)
def test_example_round_trips_through_model_dump(name: str, tmp_path: Path) -> None:
    """Dumping a loaded example's model to JSON and loading that gives the same spec back."""
    spec = load_example(name).spec
    path = tmp_path / "dumped.json"
    path.write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    assert load_spec(path).spec == spec


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    """json_schema() is itself a valid draft 2020-12 schema with its $schema and $id set."""
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://")


def test_cli_schema_is_json_schema() -> None:
    """`stagewarden schema` prints exactly json_schema()."""
    assert _cli_schema() == json_schema()


@pytest.mark.parametrize("source", ["library", "cli"])
@pytest.mark.parametrize("name", NAMES)
def test_schema_accepts_example(name: str, source: str) -> None:
    """The JSON Schema (from json_schema() and from `stagewarden schema`) accepts every example."""
    schema = json_schema() if source == "library" else _cli_schema()
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(_data(name))]
    assert errors == []


def _broken(path: tuple[str | int, ...], value: Any) -> Any:
    """paper-redundant-neighbour with the value at ``path`` replaced (``...`` deletes it)."""
    data = _data("paper-redundant-neighbour")
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(_broken(("version",), ...), id="missing-version"),
        pytest.param(_broken(("version",), 2), id="version-2"),
        pytest.param(_broken(("topology", "stages"), 1), id="stages-1"),
        pytest.param(_broken(("topology", "colour"), "blue"), id="unknown-key"),
        pytest.param(_broken(("adversary", "capabilities"), ["fly"]), id="unknown-capability"),
        pytest.param(_broken(("adversary", "capabilities"), []), id="empty-capabilities"),
        pytest.param(_broken(("adversary", "max_malicious"), "10 percent"), id="bad-budget"),
        pytest.param(_broken(("defense", "checks", 0, "scheme"), "magic"), id="unknown-scheme"),
        pytest.param(_broken(("guarantees", 0, "probability"), 1.5), id="probability-1.5"),
        pytest.param(_broken(("guarantees",), []), id="no-guarantees"),
        pytest.param(["not", "a", "mapping"], id="root-list"),
    ],
)
def test_schema_rejects_invalid_documents(document: Any) -> None:
    """Structurally broken documents fail schema validation, and the loader rejects them too."""
    assert list(Draft202012Validator(json_schema()).iter_errors(document))
    with pytest.raises(SpecError):
        load_text(json.dumps(document), "broken.json")


def test_unknown_example_name_has_a_hint() -> None:
    """Asking for an example that does not exist is a SpecError with a 'did you mean' hint."""
    with pytest.raises(SpecError) as info:
        example_text("paper-redundant-neighbor")
    assert str(info.value) == (
        "example:paper-redundant-neighbor:1:1: no packaged example named 'paper-redundant-neighbor' "
        "(did you mean 'paper-redundant-neighbour'?); see `stagewarden examples list`"
    )
    with pytest.raises(SpecError):
        load_example("no-such-example")
