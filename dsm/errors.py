"""Exceptions raised by dsm. Every user-facing failure derives from `DsmError`."""


class DsmError(Exception):
    """Base class for errors that dsm reports to users."""


class AudioError(DsmError):
    """Audio that cannot be read, written or decoded (the message names the file and the problem)."""


class CheckpointError(DsmError):
    """A checkpoint that is missing, malformed, or does not match the model it is loaded into."""


class InputError(DsmError, ValueError):
    """Arguments with the wrong shape, range or type."""
