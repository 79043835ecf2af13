"""The ``micronet`` subcommands, one module each, and the argument types they share."""

from __future__ import annotations

import argparse

__all__ = ["add_tta_mode", "device_arg"]


def add_tta_mode(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--tta-mode`` for the commands that run a model (the modes of
    :data:`micronet.runtime.tta.TTA_MODES`)."""
    parser.add_argument(
        "--tta-mode", choices=("flips", "dihedral"),
        help="which test-time augmentation (implies --tta): flips (4 passes) or dihedral (8: the flips of each image "
        "and of its transpose)",
    )  # fmt: skip


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
