"""The worker's test hooks: read once from the environment into one typed object."""

from __future__ import annotations

import pytest

from stagewarden.runtime.worker import (
    CRASH_ENV,
    HOSTILE_ENV,
    NUMERICS_ENV,
    TAMPER_MEASUREMENT_ENV,
    TestHooks,
    standby_id_for,
    worker_id_for,
)


def test_no_variable_means_no_hook() -> None:
    """An environment without the variables (or with empty ones) sets no hook."""
    assert TestHooks.from_environ({}) == TestHooks()
    assert TestHooks.from_environ({CRASH_ENV: "", NUMERICS_ENV: ""}) == TestHooks()
    hooks = TestHooks()
    assert not hooks.tampers_measurement(0) and not hooks.crashes(0, 0, 0)
    assert hooks.hostile_kind(0, 0, worker_id_for(0)) is None and hooks.skew(0) is None


def test_each_hook_is_parsed_and_applies_where_it_says() -> None:
    """Each variable is parsed once into typed fields that answer for one stage, step and worker."""
    hooks = TestHooks.from_environ(
        {TAMPER_MEASUREMENT_ENV: "2", CRASH_ENV: "1:3", HOSTILE_ENV: "0:4:garbage", NUMERICS_ENV: "1:1e-3"}
    )
    assert hooks == TestHooks(2, (1, 3), (0, 4, "garbage"), (1, 1e-3))
    assert hooks.tampers_measurement(2) and not hooks.tampers_measurement(1)
    assert hooks.crashes(1, 3, 0)
    assert not hooks.crashes(1, 3, 1)  # a recomputation of the step does not crash again
    assert not hooks.crashes(1, 2, 0) and not hooks.crashes(0, 3, 0)
    assert hooks.hostile_kind(0, 4, worker_id_for(0)) == "garbage"
    assert hooks.hostile_kind(0, 4, standby_id_for(0)) is None  # a standby that took the stage is not hostile
    assert hooks.hostile_kind(0, 5, worker_id_for(0)) is None
    assert hooks.skew(1) == 1e-3 and hooks.skew(0) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [(CRASH_ENV, "1"), (CRASH_ENV, "a:b"), (HOSTILE_ENV, "0:1"), (NUMERICS_ENV, "1:x"), (TAMPER_MEASUREMENT_ENV, "s")],
)
def test_a_malformed_hook_is_refused_in_one_line(name: str, value: str) -> None:
    """A malformed value raises ValueError, one line naming the problem, when the worker starts."""
    with pytest.raises(ValueError, match=f"the test hook {name}=") as info:
        TestHooks.from_environ({name: value})
    assert "\n" not in str(info.value)
