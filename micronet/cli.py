"""The ``micronet`` command: one subcommand module each under ``micronet.commands``.

Subcommand modules are imported only when chosen, so ``micronet detect`` never pays for
torch and ``micronet --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "train": ("micronet.commands.train", "train MicroNet on point-annotated images"),
    "distill": ("micronet.commands.distill", "train a small MicroNet on a large one's proximity maps"),
    "fit-classes": ("micronet.commands.fit_classes", "fit a class head on a frozen detector (its detections unchanged)"),
    "evaluate": ("micronet.commands.evaluate", "P / R / F1 / ED of detections or of a model on a data set"),
    "export": ("micronet.commands.export", "checkpoint -> ONNX (fp32, fp16, int8)"),
    "detect": ("micronet.commands.detect", "images or slides -> CSV, GeoJSON, overlay PNG"),
    "bench": ("micronet.commands.bench", "throughput of models or engines on this machine"),
    "check": ("micronet.commands.check", "known-answer self-test of every backend on this machine"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from micronet import __version__

    parser = argparse.ArgumentParser(prog="micronet", description="MicroNet nucleus detection SDK")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"micronet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Find the command name first, then let the chosen module build its own parser.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        if command is None and not any(a in ("-h", "--help", "--version") for a in argv):
            parser.print_help()
            return 0 if not argv else 2
        parser.parse_args(argv)  # prints help, the version or the list of valid commands, and exits
        return 2
    head = argparse.Namespace(command=command)
    module = importlib.import_module(COMMANDS[head.command][0])
    full = argparse.ArgumentParser(prog="micronet")
    full.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    full.add_argument("--version", action="version", version=f"micronet {__version__}")
    subs = full.add_subparsers(dest="command", required=True)
    module.add_parser(subs)
    args = full.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from micronet.runtime.errors import MicronetError

    try:
        return int(module.run(args) or 0)
    except MicronetError as exc:
        # What the user can fix: one clear line, no traceback. Anything else is a bug in
        # this SDK (or a library under it) and keeps its traceback.
        print(f"micronet {head.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
