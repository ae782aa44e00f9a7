"""The errors sciinr raises on purpose.

Every one derives from :class:`SciinrError` and from the builtin it refines, so callers can
catch either. Messages are one line: where, what is wrong, and what to do instead.
"""

from __future__ import annotations


class SciinrError(Exception):
    """Base of every error sciinr raises on purpose."""


class InputError(SciinrError, ValueError):
    """Bad input file, variable, dtype, shape, or non-finite data."""


class ConfigError(SciinrError, ValueError):
    """A configuration value out of its allowed range, or conflicting options."""


class FormatError(SciinrError, ValueError):
    """A truncated, corrupt, unknown or newer-version ``.sinr`` stream."""


class OutputError(SciinrError, OSError):
    """An output that cannot be written (exists, unwritable directory, unknown extension)."""
