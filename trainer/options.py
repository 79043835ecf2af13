"""Options by name, from a run's JSON or a checkpoint: one check that every name is known."""

from __future__ import annotations

from collections.abc import Iterable

from micronet.runtime.errors import InputError

__all__ = ["check_names"]


def check_names(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    """Raises :class:`InputError` (a ``ValueError``) naming every name of ``given`` not in
    ``valid`` and listing the valid ones in ``valid``'s order (a dataclass's: how its
    documentation reads), e.g. ``unknown distillation option(s) lr_max; valid: teacher, …``."""
    valid = list(valid)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise InputError(f"unknown {what} option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
