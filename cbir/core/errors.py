"""The one root of user-facing errors.

Anything raised as a :class:`CbirError` is a problem with the user's input or machine (a missing file, a corrupt
image, an unusable collection, an invalid setting): ``str(err)`` is a complete message for the user, and the CLI
and the app show it in one line. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class CbirError(Exception):
    """A user-facing error: ``str(err)`` says what is wrong and how to fix it."""


class ConfigError(CbirError, ValueError):
    """An argument or setting the user chose is invalid (a cut-off ``k < 1``, an unknown metric, a budget that no
    configuration fits); a ``ValueError`` too, so callers that validated with ``ValueError`` keep working."""
