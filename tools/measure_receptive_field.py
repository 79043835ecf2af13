"""Measures a network's receptive radius and downsampling factor on its exported ONNX
model itself: the farthest input pixel whose change moves an output pixel, and the
smallest shift of the input that shifts the output alike.

    python tools/measure_receptive_field.py [MODEL.onnx] [--size 256] [--json OUT.json]
    python tools/measure_receptive_field.py --architecture fcn [--size 1024] [--json OUT.json]
    python tools/measure_receptive_field.py --architecture all --json benchmarks/results/receptive_field.json

These are what ``micronet.runtime.tiling.RECEPTIVE_RADIUS`` and ``ALIGNMENT`` must hold
for the tiled detector to equal a whole-image pass (tiling.py cites this script).

**Downsampling factor** S. The model runs on the image and on the image less its first s
rows and columns, for s = 1, 2, 4, … 64 (every network here downsamples by factors of
2); S is the first s for which the second map equals the first shifted by s (within
float tolerance) in a central window far from the borders. A tile whose origin is a
multiple of S samples the same grid at every depth as the whole image does.

**Receptive radius.** The outputs of a 2S × 2S block at the centre (every position
modulo the stride, twice along each axis) are read while the input is perturbed:
inverted (255 − value) on all lines from one edge of the input up to line k, for rows
from the top and from the bottom, columns from the left and from the right. For an
output pixel, the extent towards that edge is its distance to the smallest k that
changes it in any bit; the radius is the largest extent over the block and the four
sides. Lines outside the field cannot change the pixel (a convolution reads exactly the
pixels of its receptive field, so the float arithmetic is identical), and from the
field's edge on, every perturbation contains the edge line and more of the field: the
test is false below the edge and, but for rounding, true from it on. That makes a
coarse-to-fine search exact where a scan of every line would cost ~2·size model runs
per axis: k on a grid of step ≈ √size first, then every k in the two grid intervals
below the first grid k that changes each pixel (two, not one: near the edge a
contribution is small and rounding can hide it at a single k; the bundled fp16-computed
model shows this). At 1024² that is ~110 runs per side instead of 1025. The results
equal those of one run per line (checked for MicroNet, FCRN-A/B and FRCN) and the
structural field of all six architectures (checked by autograd on copies with average
pools, no activations and positive weights).
A pixel that no perturbation changes (every channel before the head dead in a tiny
random model) is left out; each position modulo the stride must keep a live pixel.
The measurement fails when the edge line itself changes the block: the field is then
truncated by the input and ``--size`` must be larger.

**Architectures by name.** ``--architecture NAME`` builds the registered model at a
small width (``base=4``; MicroNet ``widths=(4, 8, 16, 16)``) with seeded random
weights, batch-norm statistics calibrated on the sample and then jittered
(:func:`export_small`), exports it to a temporary fp32 ONNX with
:func:`micronet.export.onnx.export_model`, and measures that: the radius and the stride
are properties of the depth structure, not of the widths or the weights, so a trained
model of any width has the same. ``--architecture all`` measures the bundled default
model and the six architectures (MicroNet and the baselines of
``micronet.trainer.baselines``); with ``--json`` it writes the bundled model's result at
the top level (``model``, ``input``, ``up``, ``left``, ``down``, ``right``, ``radius``:
the keys ``tests/runtime/test_tiling_margin.py`` reads) and each architecture's under
``architectures``. The input is the bundled H&E sample, mirrored out to ``--size`` when
larger; the default size per architecture is in :data:`SIZES`. On 2 cores ``all`` takes
about 3 minutes, FCN-8s at 1024² most of it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Input side per architecture: more than twice the receptive radius plus the block
# (FCN-8s's field is several hundred pixels across).
SIZES = {"micronet": 256, "fcn": 1024, "unet": 512, "fcrn_a": 256, "fcrn_b": 256, "frcn": 256}
DEFAULT_SIZE = 256
# The small width each architecture is measured at (MicroNet variants take widths).
SMALL_BASE = 4
SMALL_MICRONET_WIDTHS = (4, 8, 16, 16)
LARGEST_STRIDE = 64
WINDOW = 32  # half side of the central window the stride is tested on
PIXELS_PER_RUN = 2**21  # input pixels per ONNX Runtime call: bounds the memory


def _architectures() -> list[str]:
    from micronet.trainer.baselines import BASELINES

    return ["micronet", *BASELINES]


def _maps(session: Any, batch: np.ndarray, block: tuple[slice, slice] | None = None) -> np.ndarray:
    """``(N, H, W)`` float32 maps of an ``(N, H, W, 3)`` uint8 batch, or their ``block``
    only, in calls of at most :data:`PIXELS_PER_RUN` input pixels."""
    name = session.get_inputs()[0].name
    per_call = max(1, PIXELS_PER_RUN // (batch.shape[1] * batch.shape[2]))
    out = []
    for i in range(0, len(batch), per_call):
        maps = session.run(None, {name: batch[i : i + per_call]})[0][:, 0]  # (n, H, W)
        out.append(maps if block is None else maps[:, block[0], block[1]].copy())
    return np.concatenate(out)


def _downsampling(session: Any, image: np.ndarray) -> tuple[int, dict[int, float]]:
    """The smallest power-of-2 shift s whose cropped input ``image[s:, s:]`` gives the
    map shifted by s in the central ``2·WINDOW`` square; and the relative difference at
    each shift tried."""
    n = image.shape[0]
    reference = _maps(session, image[None])[0]  # (n, n)
    c = n // 2
    scale = max(1e-6, float(np.abs(reference).max()))
    tried: dict[int, float] = {}
    s = 1
    while s <= LARGEST_STRIDE:
        shifted = _maps(session, np.ascontiguousarray(image[None, s:, s:]))[0]  # (n − s, n − s)
        window = shifted[c - WINDOW : c + WINDOW, c - WINDOW : c + WINDOW]
        want = reference[c - WINDOW + s : c + WINDOW + s, c - WINDOW + s : c + WINDOW + s]
        tried[s] = float(np.abs(window - want).max()) / scale
        # Another sampling grid differs by a large fraction of the map; the same grid
        # only where kernels round differently for another image size.
        if tried[s] < 1e-4:
            return s, tried
        s *= 2
    raise RuntimeError(f"no shift up to {LARGEST_STRIDE} px leaves the map unchanged (relative differences {tried})")


def _edge_search(session: Any, image: np.ndarray, axis: int, from_end: bool, block: tuple[slice, slice], reference: np.ndarray) -> np.ndarray:
    """For each output pixel of ``block``, the smallest k such that inverting the k + 1
    lines along ``axis`` (0: rows, 1: columns) nearest the input's start (or end, when
    ``from_end``) changes it: ``(P,)`` int64 over the block's pixels, row-major; −1 for
    a pixel that not even inverting the whole input changes (a dead ReLU before it)."""
    n = image.shape[axis]
    flat_ref = reference.reshape(-1)
    results: dict[int, np.ndarray] = {}  # k → (P,) bool: changed

    def run(ks: list[int]) -> None:
        ks = [k for k in ks if k not in results]
        for start in range(0, len(ks), 64):  # bounds the batch held in memory
            chunk = ks[start : start + 64]
            batch = np.repeat(image[None], len(chunk), axis=0)
            for i, k in enumerate(chunk):
                lines = slice(n - 1 - k, n) if from_end else slice(0, k + 1)
                index = (i, lines) if axis == 0 else (i, slice(None), lines)
                batch[index] = 255 - batch[index]
            centre = _maps(session, batch, block).reshape(len(chunk), -1)  # (len(chunk), P)
            for k, row in zip(chunk, centre):
                results[k] = row != flat_ref

    step = max(8, math.isqrt(n))
    coarse = sorted({*range(step - 1, n, step), n - 1})
    run(coarse)
    changed = np.stack([results[k] for k in coarse])  # (len(coarse), P)
    alive = changed[-1]  # pixels that inverting the whole input changes
    first = changed[:, alive].argmax(axis=0)  # per live pixel: the first coarse k that changes it
    fine: set[int] = set()
    for j in np.unique(first):
        # Two grid intervals below: rounding may hide a small contribution at one grid k.
        low = coarse[j - 2] + 1 if j > 1 else 0
        fine.update(range(low, coarse[j]))
    run(sorted(fine))
    ks = np.asarray(sorted(results))
    table = np.stack([results[k] for k in ks])  # (len(ks), P)
    return np.where(alive, ks[table.argmax(axis=0)], -1)


def _measure(session: Any, image: np.ndarray) -> dict[str, Any]:
    """Receptive extents (up, left, down, right), radius and downsampling factor of a
    model on a square ``(n, n, 3)`` uint8 image; raises when the field is truncated."""
    n = image.shape[0]
    stride, tried = _downsampling(session, image)
    # Two pixels per position modulo the stride along each axis: a tiny random network
    # leaves a few output pixels dead (every channel before the head at zero), and the
    # extent of a position is the same at all of its pixels.
    c = n // 2 // stride * stride - stride
    block = (slice(c, c + 2 * stride), slice(c, c + 2 * stride))
    reference = _maps(session, image[None], block)[0]  # (2S, 2S)
    rows, cols = np.mgrid[block[0], block[1]]
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    phase = rows % stride * stride + cols % stride
    extent = {}
    for side, axis, from_end, pos in (("up", 0, False, rows), ("down", 0, True, rows), ("left", 1, False, cols), ("right", 1, True, cols)):
        k = _edge_search(session, image, axis, from_end, block, reference)
        if (k == 0).any():
            raise RuntimeError(f"the receptive field reaches the {side} border of a {n}² input (it is truncated): use a larger --size")
        if len(np.unique(phase[k >= 0])) < stride * stride:
            raise RuntimeError("some output position is dead at every pixel of the centre block (inverting the input does not change it): try another --seed")
        live = k >= 0
        extent[side] = int((pos - k)[live].max() if not from_end else ((n - 1 - k) - pos)[live].max())
    radius = max(extent.values())
    if n // 2 - WINDOW - stride <= radius:
        raise RuntimeError(f"the stride test's window lies within the receptive radius {radius} of the border of a {n}² input: use a larger --size")
    extent = {side: extent[side] for side in ("up", "left", "down", "right")}
    return {"input": n, **extent, "radius": radius, "alignment": stride, "shift_differences": {str(s): d for s, d in tried.items()}}


def _session(path: Path) -> Any:
    import onnxruntime as ort
    from micronet.runtime.machine import physical_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads = physical_cores()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _image(size: int) -> np.ndarray:
    """The bundled H&E sample as a ``(size, size, 3)`` uint8 image: cropped, or mirrored
    out when ``size`` is larger."""
    from micronet.runtime.detector import as_rgb_image, bundled_sample

    sample = as_rgb_image(bundled_sample())
    pad = ((0, max(0, size - sample.shape[0])), (0, max(0, size - sample.shape[1])), (0, 0))
    return np.ascontiguousarray(np.pad(sample, pad, mode="symmetric")[:size, :size])


def export_small(name: str, folder: Path, seed: int = 0) -> tuple[Path, Any]:
    """The registered model ``name`` at a small width with seeded random weights and
    batch-norm statistics, exported to ``folder/<name>.onnx`` (fp32) with the metadata
    of its own target kind; returns the path and its ``ModelInfo``.

    The running statistics are first those of the network's own activations on two
    crops of the bundled sample, then jittered: a random network with arbitrary
    statistics shrinks or shifts its activations layer by layer until the deep ReLUs
    never fire, and the deep paths, which carry the widest field (and the coarsest
    stride), then contribute nothing.
    """
    import torch
    from micronet.export.onnx import export_model
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.models import create_model
    from micronet.trainer.targets import TargetConfig

    options: dict[str, Any] = {"widths": SMALL_MICRONET_WIDTHS} if name.startswith("micronet") else {"base": SMALL_BASE}
    mean, std = [180.0, 130.0, 170.0], [40.0, 45.0, 35.0]
    torch.manual_seed(seed)
    model = create_model(name, **options)
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                # Noise on every tap, so that no filter (FCN's bilinear upsampling ones
                # included) has an exact zero that would hide part of the field.
                w = m.weight
                w.add_((torch.rand(w.shape, generator=gen) - 0.5) * 0.2 * float(w.std()))
        for m in norms:
            m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration pass
        model.eval()
        for m in norms:
            m.train()
        sample = _image(512)
        crops = np.stack([sample[:256, :256], sample[256:, 256:]])  # (2, 256, 256, 3)
        x = (torch.from_numpy(crops).float() - torch.tensor(mean)) / torch.tensor(std)
        model(x.permute(0, 3, 1, 2))  # (2, 3, 256, 256): sets the running statistics
        model.eval()
        for m in norms:
            k = m.num_features
            m.running_mean.add_((torch.rand(k, generator=gen) - 0.5) * 0.2 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(k, generator=gen) * 0.5 + 0.75)
    info = ModelInfo(
        architecture=model.config_dict(),
        mean=mean,
        std=std,
        mpp=0.55,
        threshold=0.5,
        target=TargetConfig(kind=model.target_kind).as_metadata(),
        provenance={"note": f"random weights (seed {seed}), for tools/measure_receptive_field.py"},
    )
    return export_model(model, info, folder / f"{name}.onnx"), info


def measure_model(path: Path, size: int) -> dict[str, Any]:
    """The measurement of an ONNX model on a ``size²`` crop of the bundled sample."""
    return {"model": path.name, **_measure(_session(path), _image(size))}


def measure_architecture(name: str, size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The measurement of a registered model at a small width (:func:`export_small`);
    ``architecture`` in the result is the name the tiler looks up."""
    with tempfile.TemporaryDirectory() as folder:
        path, info = export_small(name, Path(folder), seed)
        architecture = info.architecture["name"]
        size = SIZES.get(architecture, DEFAULT_SIZE) if size is None else size
        result = _measure(_session(path), _image(size))
    return {"architecture": architecture, "model": name, "config": info.architecture, "seed": seed, **result}


def _say(label: str, r: dict[str, Any]) -> None:
    print(
        f"{label}: receptive radius {r['radius']} px (up {r['up']}, left {r['left']}, down {r['down']}, right {r['right']}), "
        f"downsampling factor {r['alignment']}, measured on a {r['input']}² input"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None, help="an .onnx model or a bundled name (default: default)")
    parser.add_argument("--architecture", help="a registered model name, or 'all' (the bundled model and every architecture)")
    parser.add_argument("--size", type=int, help=f"square input side (default {DEFAULT_SIZE}; by architecture: {SIZES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of an architecture's random weights (default 0)")
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    if args.model is not None and args.architecture is not None:
        parser.error("give a model file or --architecture, not both")
    if args.size is not None and args.size < 2 * WINDOW + 2 * LARGEST_STRIDE:
        parser.error(f"--size: expected at least {2 * WINDOW + 2 * LARGEST_STRIDE}, got {args.size}")

    from micronet.runtime.bundled import resolve_model

    try:
        if args.architecture is None:
            path = resolve_model(args.model or "default")
            result = measure_model(path, args.size or DEFAULT_SIZE)
            _say(path.name, result)
        elif args.architecture == "all":
            if args.size is not None:
                parser.error("--size applies to one architecture; 'all' uses each one's default")
            result = measure_model(resolve_model("default"), SIZES["micronet"])
            _say(result["model"], result)
            result["architectures"] = {}
            for name in _architectures():
                result["architectures"][name] = measure_architecture(name, seed=args.seed)
                _say(name, result["architectures"][name])
        else:
            from micronet.trainer.models import list_models

            if args.architecture not in list_models():
                parser.error(f"--architecture: unknown {args.architecture!r}; valid: all, {', '.join(list_models())}")
            result = measure_architecture(args.architecture, args.size, args.seed)
            _say(args.architecture, result)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
