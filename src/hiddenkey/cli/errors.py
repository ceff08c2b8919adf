"""The errors the application reports as one line on stderr with exit code 2."""

from __future__ import annotations

from ..attach import AttachError
from ..config import ConfigError
from ..tasks import DataError


class CLIError(ValueError):
    """A usage error reported as one line before anything is written."""


#: Exceptions that mean "the user asked for something that cannot be done", not a bug.
USER_ERRORS = (CLIError, DataError, ConfigError, AttachError, FileNotFoundError)
