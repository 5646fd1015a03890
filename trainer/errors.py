"""Trainer errors."""

from core.errors import UnirecError


class TrainerError(UnirecError):
    """The trainer cannot go on (bad checkpoint, missing topic, offsets moving backwards, ...)."""
