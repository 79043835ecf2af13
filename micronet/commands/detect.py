"""``micronet detect``: nucleus centres in images and slides → CSV, GeoJSON, overlay PNG.

For each image ``NAME.ext`` the output folder receives, by ``--format``:

- ``csv``: ``NAME.csv``, header ``x,y,score``, 0-based pixels (x = column, y = row);
- ``geojson``: ``NAME.geojson``, QuPath detections (*File › Import objects*);
- ``png``: ``NAME.overlay.png``, the image with a circle around each detection.

Whole-slide inputs (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.ome.tif``, and TIFFs
larger than 10,000 px on a side) go to ``micronet.runtime.slide.detect_slide``, which
streams them tile by tile. ``--demo`` runs the bundled model on the bundled sample.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from micronet.commands import device_arg
from micronet.runtime.errors import InputError, MissingFileError
from micronet.runtime.images import IMAGE_SUFFIXES

__all__ = ["add_parser", "run", "FORMATS", "is_slide"]

FORMATS = ("csv", "geojson", "png")
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".svslide", ".vms")
SLIDE_MIN_SIDE = 10_000  # a plain TIFF larger than this (px) on a side is read as a slide
DEMO_OUT = Path("micronet-demo")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``detect`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "detect",
        help="images or slides -> CSV, GeoJSON, overlay PNG",
        description="Detect nucleus centres in H&E images (PNG, JPEG, TIFF) or whole slides and write "
        "CSV (x,y,score), QuPath GeoJSON and overlay PNG files.",
    )
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image or slide files, or folders of images")
    parser.add_argument("--out", type=Path, metavar="DIR", help=f"output folder (created; with --demo default {DEMO_OUT}/)")
    parser.add_argument(
        "--model",
        metavar="FILE",
        help="an .onnx model or TensorRT .engine, or a bundled model: default (the paper's network, the default) "
        "or fast-cpu (ReLU fine-tune distilled from it, int8: about twice as fast on a CPU, as accurate)",
    )
    parser.add_argument(
        "--device", type=device_arg, default="auto", metavar="D", help="auto, cpu, cuda or cuda:N (default auto: the GPU when available)"
    )
    parser.add_argument(
        "--format",
        default=",".join(FORMATS),
        metavar="LIST",
        help=f"comma-separated outputs among {', '.join(FORMATS)} (default: all)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        metavar="UM",
        help="pixel size of the inputs in µm/px; resampled to the model's when different (default: the model's for "
        "images, the slide's own for slides)",
    )
    parser.add_argument("--threshold", type=float, metavar="T", help="detection threshold ξ (default: the model's own)")
    parser.add_argument("--demo", action="store_true", help="run the bundled model on the bundled sample image")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_formats(text: str) -> tuple[str, ...]:
    """``"csv,png"`` → ``("csv", "png")``; unknown names raise, listing the valid ones."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise InputError(f"--format: expected a comma-separated list of {', '.join(FORMATS)}, got {text!r}")
    return names


def is_slide(path: Path) -> bool:
    """Whether a file is read as a whole slide rather than as one image."""
    name = path.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")) or path.suffix.lower() in SLIDE_SUFFIXES:
        return True
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return max(int(page.imagelength), int(page.imagewidth)) > SLIDE_MIN_SIDE
        except (tifffile.TiffFileError, OSError, IndexError) as exc:
            raise InputError(f"{path}: not a readable TIFF ({exc})") from exc
    return False


def _expand(inputs: list[Path]) -> list[Path]:
    """Files as given; folders replaced by the images inside them (sorted, not recursive)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + SLIDE_SUFFIXES)
            if not found:
                raise InputError(f"{item}: no images ({', '.join(IMAGE_SUFFIXES)}) or slides in this folder")
            files.extend(found)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES + SLIDE_SUFFIXES:
                valid = ", ".join(IMAGE_SUFFIXES + SLIDE_SUFFIXES)
                raise InputError(f"{item}: expected an image or slide file ({valid}), got {item.suffix or 'no suffix'!r}")
            files.append(item)
        else:
            raise MissingFileError(f"input not found: {item}")
    return files


def _stem(path: Path) -> str:
    """The output name of an input: ``a.png`` → ``a``, ``b.ome.tif`` → ``b``."""
    for double in (".ome.tiff", ".ome.tif"):
        if path.name.lower().endswith(double):
            return path.name[: -len(double)]
    return path.stem


def _write(found: Any, image: Any, out: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    written = []
    if "csv" in formats:
        written.append(found.to_csv(out / f"{stem}.csv"))
    if "geojson" in formats:
        found.to_geojson(out / f"{stem}.geojson")
        written.append(out / f"{stem}.geojson")
    if "png" in formats:
        found.to_overlay(image, out / f"{stem}.overlay.png")
        written.append(out / f"{stem}.overlay.png")
    return written


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet detect``; returns the exit status. User errors raise ValueError or
    FileNotFoundError with a one-line message."""
    from micronet.runtime.bundled import bundled_sample
    from micronet.runtime.images import as_rgb_image

    formats = parse_formats(args.format)
    if args.demo:
        if args.inputs:
            raise InputError("--demo runs on the bundled sample image; give either --demo or INPUT files, not both")
        files = [bundled_sample()]
        out = args.out if args.out is not None else DEMO_OUT
    else:
        if not args.inputs:
            raise InputError("expected INPUT images or slides (or --demo)")
        if args.out is None:
            raise InputError("--out DIR is required: the folder to write the results to")
        files = _expand(args.inputs)
        out = args.out
    stems = [_stem(f) for f in files]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise InputError(f"inputs with the same name would write the same outputs: {', '.join(duplicates)}")
    slides = [f for f in files if is_slide(f)]

    from tqdm.auto import tqdm

    from micronet.runtime.detector import Detector
    from micronet.runtime.slide import detect_slide

    detector = Detector(args.model, device=args.device, threshold=args.threshold)
    out.mkdir(parents=True, exist_ok=True)
    total, images = 0, 0
    bar = tqdm(files, desc="detect", unit="file", disable=args.no_progress)
    for path, stem in zip(bar, stems):
        if path in slides:
            # Streams tile by tile with its own progress bar; writes the same three files.
            found = detect_slide(detector, path, mpp=args.mpp, out_dir=out, formats=formats, progress=not args.no_progress)
            total += len(found)
            continue
        image = as_rgb_image(path)
        found = detector.detect(image, mpp=args.mpp)
        _write(found, image, out, stem, formats)
        total += len(found)
        images += 1
        bar.set_postfix(nuclei=len(found))
    bar.close()
    what = f"{images} image{'s' * (images != 1)}" + (f" and {len(slides)} slide{'s' * (len(slides) != 1)}" if slides else "")
    print(f"{total} nuclei in {what} ({detector.backend_name}); wrote {', '.join(formats)} to {out}/")
    return 0
