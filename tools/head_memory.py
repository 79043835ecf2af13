"""Peak RSS of one model on a random 2000² image at a fixed tile size, in a fresh process
per call: what a class head adds to a detector's memory at the same tile (the constants
``_CLASS_HEAD_BYTES`` and ``_QUARTER_HEAD_BYTES`` in runtime/tiling.py).

    python tools/head_memory.py default 632
    python tools/head_memory.py runs/classhead4/default.onnx 632     # the same, with a head
"""

from __future__ import annotations

import argparse
import resource

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a bundled name or an .onnx file")
    parser.add_argument("tile", type=int, help="tile side in pixels")
    parser.add_argument("--size", type=int, default=2000, help="image side (default 2000)")
    args = parser.parse_args(argv)
    from micronet import Detector

    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    detector = Detector(args.model, tile_size=args.tile, threads=1)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    detector.detect(image)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.model}: tile {detector.tile_size}², peak RSS {peak:.0f} MB ({loaded:.0f} MB after loading)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
