"""The root of every error unirec raises on purpose."""


class UnirecError(Exception):
    """Base class: callers catch this to tell our errors from bugs."""


class ConfigError(UnirecError):
    """A setting or schema file holds a value we cannot use."""


class InfraError(UnirecError):
    """A local server (broker, Redis) is missing, cannot start, or is not answering."""
