"""User-facing error types: each message is one sentence naming the cause and the fix."""


class SlmError(Exception):
    """Base class for mistakes a user can fix; the CLI prints the message without a traceback."""


class ConfigError(SlmError, ValueError):
    """A config key, value or combination is invalid."""


class DataError(SlmError, ValueError):
    """Input data is missing, empty, undecodable or too short."""


class CheckpointError(SlmError, ValueError):
    """A checkpoint or run directory cannot be used as asked."""
