"""Fuzzing the run configuration (``runtime/config.py``: ``RunConfig.from_json``, which
``stagewarden conformance`` and ``replay`` apply to a run's ``summary.json``, and
``load_run_config``), starting from the configurations of the recorded runs.

Properties: a configuration is refused with ConfigError or read, and what is read writes back to
a configuration that reads back equal. Inputs that once let a non-domain exception escape are
kept as regression tests at the end of the module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fuzzing import mutated_json_text, outcome
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import fuzz_settings, json_values, mutated_bytes, mutated_tree

from stagewarden.runtime.config import ConfigError, RunConfig, load_run_config

RECORDED = Path(__file__).resolve().parents[2] / "docs" / "report-example"
CONFIGS = [json.loads((RECORDED / run / "summary.json").read_text())["config"] for run in ("clean", "attacked")]
CONFIGS.append(RunConfig().to_json())
CONFIG_TEXTS = tuple(json.dumps(c, indent=2, sort_keys=True).encode() for c in CONFIGS)

_ATTACKS = st.fixed_dictionaries(
    {"kind": st.sampled_from(["reverse", "scale", "noise", "weights", "poison_data", "false_accuse", "x"])},
    optional={
        "stages": st.lists(st.integers(-1, 5), max_size=3),
        "covers": st.lists(st.integers(0, 5), max_size=2),
        "direction": st.sampled_from(["forward", "backward", "input", "sideways"]),
        "rate": st.one_of(st.floats(), st.integers(-1, 2)),
        "scale": st.one_of(st.floats(), st.sampled_from([1, 2, 10**400])),
        "noise": st.one_of(st.floats(), st.sampled_from([0, 10**400])),
        "bit": st.integers(-1, 70),
        "start": st.one_of(st.integers(-2, 5), st.floats()),
    },
)
_CONFIG_VALUES = st.one_of(
    json_values,
    st.floats(),
    st.sampled_from(["gpipe", "1f1b", "gloo", "nccl", "cpu", "cuda", "spot_check", "redundant_neighbour", "eject"]),
    st.sampled_from(["coordinator", "upstream", "checked_worker", "rollback", "skip_stage", "restart", "none"]),
    _ATTACKS,
)


@fuzz_settings()
@given(st.sampled_from(CONFIGS).flatmap(lambda c: mutated_tree(c, values=_CONFIG_VALUES)))
def test_edited_configurations(document: Any) -> None:
    """An edited configuration is refused with ConfigError or read; what is read writes back to a
    JSON object that reads back equal."""
    config, error = outcome(RunConfig.from_json, document, errors=ConfigError)
    if error is not None:
        assert isinstance(error, ConfigError) and str(error)
        return
    assert isinstance(config, RunConfig)
    written = config.to_json()
    # Every value given is kept (absent keys of model and train take their defaults).
    for key, value in document.items():
        if key in ("model", "train"):
            assert {k: written[key][k] for k in value} == value
        elif key != "data":  # data: any iterable, kept as a tuple
            assert written[key] == value
    assert RunConfig.from_json(written) == config


@fuzz_settings()
@given(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from(CONFIG_TEXTS).flatmap(lambda t: mutated_bytes(t, CONFIG_TEXTS)),
        st.sampled_from(CONFIG_TEXTS).flatmap(lambda t: mutated_json_text(t, CONFIG_TEXTS)),
    )
)
@example(b"\xff\xfe{}")
def test_configuration_files(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """Any file given as a run configuration is read or refused with ConfigError."""
    path = tmp_path_factory.getbasetemp() / "run-config.json"
    path.write_bytes(data)
    config, error = outcome(load_run_config, path, errors=ConfigError)
    assert error is not None or isinstance(config, RunConfig)


def test_recorded_configurations_read() -> None:
    """The bases of the edits are valid configurations that round-trip."""
    for document in CONFIGS:
        config = RunConfig.from_json(document)
        assert RunConfig.from_json(config.to_json()) == config


# -- regressions: inputs that once let a non-domain exception escape -------------------------------


def test_deeply_nested_configuration_file(tmp_path: Path) -> None:
    """Nesting past the recursion limit: ConfigError, not RecursionError."""
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    with pytest.raises(ConfigError):
        load_run_config(path)


@pytest.mark.parametrize("name", ["rate", "scale", "noise", "drift"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 2**53 + 1])
def test_attack_number_beyond_float_range(name: str, value: int) -> None:
    """An attack's rate, scale, noise or drift given as an integer past 2**53 (10**400 once raised
    OverflowError in ``math.isfinite``): ConfigError."""
    kind = {"scale": "scale", "noise": "noise", "drift": "weights"}.get(name, "scale")
    attack = {"kind": kind, "stages": [1], name: value}
    document = {**CONFIGS[0], "attack": attack}
    with pytest.raises(ConfigError):
        RunConfig.from_json(document)


def test_configuration_file_with_huge_attack_scale(tmp_path: Path) -> None:
    """The same through ``load_run_config``: ConfigError, not OverflowError."""
    path = tmp_path / "run-config.json"
    path.write_text(json.dumps({**CONFIGS[0], "attack": {"kind": "scale", "stages": [1], "scale": 10**400}}))
    with pytest.raises(ConfigError):
        load_run_config(path)
