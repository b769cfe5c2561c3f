"""The run configuration: validation and JSON round trip."""

from __future__ import annotations

import pytest

from stagewarden.runtime.config import ConfigError, RunConfig
from stagewarden.runtime.model import GPTConfig


def test_json_round_trip() -> None:
    """A configuration survives to_json and from_json unchanged."""
    config = RunConfig(stages=3, schedule="gpipe", model=GPTConfig(n_layer=6), data=("a", "b"), standby=2)
    assert RunConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "kwargs", [{"stages": 0}, {"stages": 5}, {"schedule": "zigzag"}, {"backend": "nccl"}, {"verification": "magic"}]
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Inconsistent settings raise ConfigError with a message."""
    with pytest.raises(ConfigError):
        RunConfig(**kwargs)  # type: ignore[arg-type]


def test_measured_json_ignores_volatile_fields() -> None:
    """The measured configuration leaves out the step count, timeout and attack plan and has no floats."""
    a = RunConfig()
    b = RunConfig(steps=99, timeout=5.0, attack={"kind": "reverse", "stages": [0]}, max_recomputations=9)
    assert a.measured_json() == b.measured_json()
    assert "train" in a.measured_json() and isinstance(a.measured_json()["train"]["lr"], str)


def test_unknown_keys_are_refused() -> None:
    """from_json refuses keys it does not know."""
    with pytest.raises(ConfigError, match="unknown"):
        RunConfig.from_json({**RunConfig().to_json(), "colour": "red"})


@pytest.mark.parametrize("verification", ["spot_check", "redundant_neighbour"])
def test_dropout_is_refused_where_units_are_re_executed(verification: str) -> None:
    """A dropout mask is drawn at random in every unit, so a verifier's re-execution (or a
    neighbour's recomputation) could not agree with an honest worker: the configuration says so
    rather than letting every honest stage be convicted. Without verification dropout trains."""
    with pytest.raises(ConfigError, match="dropout 0.1 draws a random mask"):
        RunConfig(model=GPTConfig(dropout=0.1), verification=verification)
    assert RunConfig(model=GPTConfig(dropout=0.1), verification="none").model.dropout == 0.1


@pytest.mark.parametrize("value", [-1, 1001, True, 2.5])
def test_max_recomputations_is_a_bounded_integer(value: object) -> None:
    """A step's recomputations are bounded: a negative, huge, boolean or fractional limit is refused by name."""
    with pytest.raises(ConfigError, match="max_recomputations must be an integer from 0 to 1000"):
        RunConfig(max_recomputations=value)  # type: ignore[arg-type]
    assert RunConfig(max_recomputations=1000).max_recomputations == 1000
