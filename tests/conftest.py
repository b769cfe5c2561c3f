"""Shared test configuration.

pytest puts this folder on ``sys.path`` (rootdir-relative imports, no ``__init__.py``), so test
modules import the Hypothesis strategies with ``from strategies import ...``.

Hypothesis profiles (see "Fuzzing" in ``docs/development.rst``):

``ci``
    The default: every property and fuzz test runs a bounded number of examples (100 per unit of
    :func:`strategies.budget`), so the whole suite stays fast.
``fuzz``
    A long local session: selected by ``STAGEWARDEN_FUZZ_EXAMPLES=<n>`` (``n`` examples per unit
    of budget) or by ``HYPOTHESIS_PROFILE=fuzz`` (20000 examples per unit). Property tests then run
    without the per-test pytest timeout; every parser call keeps its own wall-clock limit.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Runs launched by the tests start their processes from the fork server, as `stagewarden train`
# does: pytest-xdist's workers run under `python -c`, where the automatic choice would fall back
# to one `python -m` subprocess per process (tests of that choice set the variable themselves).
os.environ.setdefault("STAGEWARDEN_START_METHOD", "forkserver")

#: Environment variable that asks for a long fuzz session with this many examples per fuzz test.
FUZZ_EXAMPLES_ENV = "STAGEWARDEN_FUZZ_EXAMPLES"

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]

# No per-example deadline: on a shared machine one example's time varies tenfold with the load,
# and speed is measured by the benchmarks, not asserted by tests.
settings.register_profile("ci", max_examples=100, deadline=None, print_blob=True, suppress_health_check=_HEALTH)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get(FUZZ_EXAMPLES_ENV) or 20_000),
    print_blob=True,
    suppress_health_check=_HEALTH,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("fuzz" if os.environ.get(FUZZ_EXAMPLES_ENV) else "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a ``fuzz`` session, lift the per-test timeout of Hypothesis tests (they run for as long as
    the number of examples asks; each parser call is still bounded by its own wall-clock limit)."""
    if settings.get_current_profile_name() != "fuzz":
        return
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            item.add_marker(pytest.mark.timeout(0), append=False)
