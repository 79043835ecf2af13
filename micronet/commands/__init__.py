"""The ``micronet`` subcommands, one module each, and the argument types they share."""

from __future__ import annotations

import argparse

__all__ = ["device_arg"]


def device_arg(text: str) -> str:
    """``--device`` as the Detector accepts it: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (checked by :func:`micronet.runtime.detector.parse_device`, so the command line and the
    API accept the same strings)."""
    from micronet.runtime.detector import parse_device

    try:
        parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("device: ")) from None
    return text
