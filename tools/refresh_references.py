"""Rewrites the known answers (``micronet check``'s reference results) stored in the
bundled ONNX models, from the checkpoints they were exported from, as ``micronet export``
computes them (:func:`micronet.export.onnx.reference_results`); the graphs and the rest
of the metadata stay as they are. Run it when the reference images or what a reference
holds change (runtime/diagnostics/check.py), then ``micronet check`` each model.

Each checkpoint is first checked to be the model's own: its map on the images the old
reference shares with the new one must equal the stored one (float rounding aside).

    python tools/refresh_references.py            # every bundled model
    python tools/refresh_references.py fast-cpu   # one
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Bundled model files → the checkpoint (trainer/pretrained/) each was exported from.
SOURCES = {
    "micronet_crchisto.onnx": "micronet_crchisto",
    "micronet_crchisto.fp16.onnx": "micronet_crchisto",
    "micronet_crchisto_relu.int8.onnx": "micronet_crchisto_relu",
    "micronet_crchisto_phenotypes.int8.onnx": "micronet_crchisto_phenotypes",
    "micronet_crchisto_accurate.onnx": "micronet_crchisto_accurate",
}
SAME_MAP = 1e-4  # torch versions differ in float rounding, not more


def _same_source(old: dict | None, new: dict) -> None:
    """Refuses a new reference whose maps differ from the old one's on shared images."""
    def decode(text: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)

    if not old:
        return
    fresh = {(e.get("source", "sample.png"), tuple(e["box"])): e for e in new["images"]}
    for entry in old["images"]:
        match = fresh.get((entry.get("source", "sample.png"), tuple(entry["box"])))
        if match is None or match["pixels_sha256"] != entry["pixels_sha256"]:
            continue
        shape = tuple(entry["map_shape"])
        diff = float(np.abs(decode(entry["map"], shape) - decode(match["map"], shape)).max())
        if diff > SAME_MAP:
            raise SystemExit(f"the checkpoint's map differs from the stored reference by {diff:.3g} on {entry['box']}: not this model's checkpoint")


def refresh(file: str) -> None:
    import onnx

    from micronet.export.onnx import reference_results
    from micronet.runtime.diagnostics.check import REFERENCE_KEY
    from micronet.runtime.files import replace_atomically
    from micronet.runtime.model_info import METADATA_KEY, ModelInfo
    from micronet.trainer.checkpoint import load_checkpoint

    path = REPO / "runtime" / "models" / file
    model = onnx.load(str(path))
    props = {p.key: p for p in model.metadata_props}
    exported = ModelInfo.from_json(props[METADATA_KEY].value)
    net, info = load_checkpoint(REPO / "trainer" / "pretrained" / f"{SOURCES[file]}.safetensors")
    if (info.threshold, info.min_distance) != (exported.threshold, exported.min_distance):
        raise SystemExit(f"{file}: the checkpoint's ξ and distance {info.threshold, info.min_distance} differ from the model's {exported.threshold, exported.min_distance}")
    reference = reference_results(net, info)
    _same_source(json.loads(props[REFERENCE_KEY].value) if REFERENCE_KEY in props else None, reference)
    if REFERENCE_KEY not in props:
        props[REFERENCE_KEY] = model.metadata_props.add()
        props[REFERENCE_KEY].key = REFERENCE_KEY
    props[REFERENCE_KEY].value = json.dumps(reference, separators=(",", ":"))
    replace_atomically(path, lambda tmp: onnx.save(model, str(tmp)))
    counts = [len(e["xy"]) for e in reference["images"]]
    print(f"{file}: {reference['format']}, {len(counts)} images, {sum(counts)} detections{', classes' if 'classes' in reference['images'][0] else ''}")


def main(argv: list[str] | None = None) -> None:
    from micronet.runtime.bundled import BUNDLED_MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"bundled names ({', '.join(BUNDLED_MODELS)}) or files in runtime/models (default: all)")
    args = parser.parse_args(argv)
    for file in [BUNDLED_MODELS.get(m, m) for m in args.models] or list(SOURCES):
        if file not in SOURCES:
            parser.error(f"{file}: expected one of {', '.join(SOURCES)}")
        refresh(file)


if __name__ == "__main__":
    sys.exit(main())
