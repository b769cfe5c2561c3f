"""Errors of the training runtime: each message says what is wrong and how to fix it."""

from __future__ import annotations


class RuntimeSetupError(ValueError):
    """A training setup that cannot run: a bad model partition, data source or schedule."""


class PartitionError(RuntimeSetupError):
    """The model cannot be split into the requested number of pipeline stages."""


class DataError(RuntimeSetupError):
    """A training corpus that is missing, empty, binary or too small for the batch shape."""


class ScheduleError(RuntimeSetupError):
    """A pipeline schedule that would deadlock, lose work or run a unit out of order."""
