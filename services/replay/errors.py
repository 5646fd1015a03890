"""Errors of the replay tools: dataset lookup, `source:` sections, bad rows."""

from core.errors import ConfigError, UnirecError


class ReplayError(UnirecError):
    """Base class of the producer/replay/simulator errors."""


class SourceError(ReplayError, ConfigError):
    """A `source:` section is missing or invalid, or does not match its files."""


class DatasetError(ReplayError):
    """A dataset is unknown, absent, or could not be fetched."""


class BadRowError(ReplayError):
    """A row could not be turned into an event (raised only in strict mode; otherwise counted and skipped)."""
