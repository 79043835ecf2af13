"""The errors the SDK raises for what its caller asked: bad input, a missing or foreign
file, a missing optional package.

Each is also the built-in exception a Python caller expects (``InputError`` is a
``ValueError``, ``MissingFileError`` a ``FileNotFoundError`` …), so ``except ValueError``
keeps working. The command line prints these, and only these, as one line with the exit
status of a user error (2); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["MicronetError", "InputError", "InputTypeError", "MissingFileError", "MissingPackageError"]


class MicronetError(Exception):
    """Base class: something the caller can fix, described in one line."""


class InputError(MicronetError, ValueError):
    """A value, file content or option the SDK cannot use (the message says what was
    expected and what came)."""


class InputTypeError(MicronetError, TypeError):
    """An argument of the wrong type."""


class MissingFileError(MicronetError, FileNotFoundError):
    """A file or folder that does not exist."""


class MissingPackageError(MicronetError, ImportError):
    """An optional package this feature needs (the message names the pip extra)."""
