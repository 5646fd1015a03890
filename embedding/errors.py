"""Errors of the embedding library."""

from core.errors import UnirecError


class EmbeddingError(UnirecError):
    """Base class of the embedding library's errors."""


class SchemaError(EmbeddingError):
    """A feature schema is missing, malformed, or does not match what it is used with."""


class ArtifactError(EmbeddingError):
    """An exported model artifact is corrupt, incomplete, or for another schema/method/version."""
