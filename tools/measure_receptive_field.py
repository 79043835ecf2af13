"""Measures a model's receptive radius from the exported ONNX model itself: the farthest
input pixel whose change moves an output pixel.

    python tools/measure_receptive_field.py [MODEL.onnx] [--size 256] [--json OUT.json]

For every input row r (and then every column), one batch element has row r replaced by
its inverse (255 − value); the others stay the reference image. An output pixel "sees"
row r when its value differs, in any bit, from the unperturbed element of the same batch
(a convolution reads exactly the pixels of its receptive field, so outside it the float
arithmetic is identical). Reading the outputs of an 8 × 8 block at the centre gives the
extent for all 64 positions modulo the network's stride of 8 at once.

The result is what ``micronet.runtime.tiling.RECEPTIVE_RADIUS`` must hold for the tiled
detector to equal a whole-image pass (tiling.py cites this script). The input is the
bundled H&E sample, cropped to ``--size``; the model defaults to the bundled default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _extent(session, image: np.ndarray, axis: int, block: slice) -> tuple[int, int]:
    """The largest distance (up or left, then down or right) from an output pixel in the
    centre block to an input line along ``axis`` (0: rows, 1: columns) that changes it."""
    n = image.shape[axis]
    batch = np.repeat(image[None], n + 1, axis=0)  # element 0: the reference
    for line in range(n):
        index = [line + 1, slice(None), slice(None)]
        index[1 + axis] = line
        batch[tuple(index)] = 255 - batch[tuple(index)]
    name = session.get_inputs()[0].name
    maps = np.concatenate([session.run(None, {name: batch[i : i + 16]})[0] for i in range(0, n + 1, 16)])[:, 0]  # (n+1, H, W)
    centre = maps[:, block, block]  # (n+1, 8, 8)
    changed = (centre[1:] != centre[0][None]).reshape(n, -1)  # (lines, 64 output pixels)
    before = after = 0
    coords = np.arange(block.start, block.stop)
    out_pos = np.repeat(coords, 8) if axis == 0 else np.tile(coords, 8)  # each pixel's row (or column)
    for k in range(changed.shape[1]):
        lines = np.flatnonzero(changed[:, k])
        if len(lines):
            before = max(before, int(out_pos[k] - lines.min()))
            after = max(after, int(lines.max() - out_pos[k]))
    return before, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="default", help="an .onnx model or a bundled name (default: default)")
    parser.add_argument("--size", type=int, default=256, help="square input side, a multiple of 8 (default 256)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from micronet.runtime.detector import as_rgb_image, bundled_sample, resolve_model
    from micronet.runtime.machine import physical_cores

    path = resolve_model(args.model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = physical_cores()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    sample = as_rgb_image(bundled_sample())
    size = min(args.size, *sample.shape[:2]) // 8 * 8
    image = np.ascontiguousarray(sample[:size, :size])
    c = size // 2 // 8 * 8
    block = slice(c, c + 8)
    up, down = _extent(session, image, 0, block)
    left, right = _extent(session, image, 1, block)
    if min(c - max(up, left), size - c - 8 - max(down, right)) <= 0:
        print(f"the receptive field reaches the border of a {size}² input: use a larger --size", file=sys.stderr)
        return 1
    result = {"model": path.name, "input": size, "up": up, "left": left, "down": down, "right": right, "radius": max(up, left, down, right)}
    print(f"{path.name}: receptive radius {result['radius']} px (up {up}, left {left}, down {down}, right {right}) "
          f"over the 64 output positions modulo 8, measured on a {size}² input")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
