"""``micronet evaluate``: precision, recall, F1 and mean distance (ED) of detections.

Two ways in, one of them per call.

**Score detection CSVs** (``--pred``, with ``--radius R``): any CSV with ``x`` and ``y``
columns, e.g. what ``micronet detect`` writes for images (``x,y,score``) and slides
(``x,y,x_um,y_um,score``); :func:`micronet.runtime.evaluation.evaluate.score_predictions`.

==================================================  ====================================
``--pred DIR --truth DIR``                          files pair up by image name
``--pred DIR --truth SET|--data SET [--split S]``   a data set, or one split of it
``--pred DIR --truth DIR|SET [--image NAME]``       one image of a folder
``--pred FILE --truth FILE``                        one image against its annotations
``--pred FILE --truth DIR|SET --image NAME``        one image of a folder or data set
==================================================  ====================================

``DIR`` is a folder of ``<image name>.csv`` files, ``SET`` a data set folder
(``points/`` inside, ``split.csv`` for ``--split``; ``--truth SET/points`` also finds
its ``split.csv``). ``--split`` and ``--image`` exclude each other. An annotated image
without a prediction file counts as one the tool detected nothing in (its nuclei are
misses); prediction files without annotations are not scored; both are listed. With a
``score`` column in every file, ``--threshold T`` keeps the detections scoring above T,
and the output adds the best-F1 score threshold.

**Evaluate a model** (``--model FILE|NAME --data SET [--split S] [--threshold T] [--tta]``):
a checkpoint, ONNX model, TensorRT engine or bundled model (``default``, ``fast-cpu``)
run on a data set: :func:`micronet.runtime.evaluation.evaluate.evaluate_model_file`. ``--tta``
averages each image's maps over its flips (``Detector(tta=True)``); a checkpoint, run by
the trainer's torch code, refuses it.

Prints the pooled P / R / F1 / ED and a per-image table; ``--json FILE`` also writes
them (pooled values at the top level, ``per_image`` below), and, where there is a
threshold sweep, the precision-recall curve next to it (``FILE.pr.png``). The work is
the library's; this module parses, checks the combination of options, calls, prints
and writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from micronet.commands import add_tta_mode
from micronet.runtime.errors import InputError, MissingFileError, MissingPackageError

__all__ = ["add_parser", "run"]

_SOURCES = (
    "either --pred DIR|FILE with --truth or --data (score detection CSVs) "
    "or --model FILE|NAME --data DIR (evaluate a model on a data set)"
)
_PRED_FORMS = (
    "--pred DIR --truth DIR|SET [--split S | --image NAME]; --pred DIR --data SET [--split S | --image NAME]; "
    "--pred FILE --truth FILE; --pred FILE --truth DIR|SET (or --data SET) --image NAME (SET: a data set folder with points/ "
    "and split.csv)"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the ``evaluate`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "evaluate",
        help="P / R / F1 / ED of detections or of a model on a data set",
        description=f"Precision, recall, F1 and mean distance (ED) of detections. Give {_SOURCES}.",
        epilog=f"Valid with --pred: {_PRED_FORMS}. An annotated image without a prediction file is scored as "
        "detecting nothing (its nuclei count as misses), and listed.",
    )
    csvs = parser.add_argument_group("score detection CSVs")
    csvs.add_argument(
        "--pred",
        type=Path,
        metavar="DIR|FILE",
        help="folder of detection CSVs <image name>.csv, or one CSV: any header with x and y columns "
        "(micronet detect's x,y,score and x,y,x_um,y_um,score included)",
    )
    csvs.add_argument(
        "--truth",
        type=Path,
        metavar="DIR|SET|FILE",
        help="annotations: a folder of CSVs (e.g. ../shared/data/crchisto/points), a data set folder, or one CSV",
    )
    csvs.add_argument("--image", metavar="NAME", help="score this one image of the annotations (e.g. img5)")
    model = parser.add_argument_group("evaluate a model")
    model.add_argument(
        "--model",
        type=Path,
        metavar="FILE|NAME",
        help="checkpoint, ONNX model or TensorRT engine, or a bundled model: default or fast-cpu",
    )
    model.add_argument("--data", type=Path, metavar="SET", help="data set folder with images/ and points/ (with --pred: points/)")
    model.add_argument(
        "--tta", action="store_true",
        help="test-time augmentation: run the model on each image and its 3 flips and average the maps before finding "
        "peaks (an .onnx or .engine model or a bundled name; not a .safetensors checkpoint; default: none, --model "
        "accurate: dihedral)",
    )  # fmt: skip
    add_tta_mode(model)
    parser.add_argument("--split", metavar="NAME", help="subset of the data set (split.csv) to evaluate (e.g. test)")
    parser.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="detection threshold (with --model default: the model's own; with --pred: keep score > T, default all)",
    )
    parser.add_argument(
        "--radius",
        type=float,
        metavar="R",
        help="matching radius in pixels, inclusive (6 at 20x for CRCHistoPhenotypes, 16 at 40x in the paper); "
        "required with --pred",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    return parser


def _check_sources(args: argparse.Namespace) -> None:
    csv_mode = args.pred is not None or args.truth is not None
    model_mode = args.model is not None
    if csv_mode and model_mode:
        given = [f"--{k}" for k in ("pred", "truth", "model") if getattr(args, k) is not None]
        raise InputError(f"expected {_SOURCES}, not both; got {' '.join(given)}")
    if not csv_mode and not model_mode:
        raise InputError(f"expected {_SOURCES}" if args.data is None else "--data goes with --model FILE|NAME or --pred DIR|FILE")
    if csv_mode:
        if args.pred is None:
            raise InputError(f"--pred and --truth go together: give both (valid: {_PRED_FORMS})")
        if args.truth is None and args.data is None:
            raise InputError(f"--pred needs the annotations: --truth or --data (valid: {_PRED_FORMS})")
        if args.truth is not None and args.data is not None:
            raise InputError(f"--truth and --data both give the annotations: give one (valid: {_PRED_FORMS})")
        if args.radius is None:
            raise InputError("--radius is required with --pred (e.g. 6 for CRCHistoPhenotypes at 20x)")
        if args.split is not None and args.image is not None:
            raise InputError(f"--split and --image: give one of them, not both (valid: {_PRED_FORMS})")
        if args.tta or args.tta_mode:
            raise InputError("--tta applies to --model (it changes how the model runs); --pred CSVs are scored as they are")
        _check_pred_paths(args)
    else:
        if args.data is None:
            raise InputError("--model and --data go together: give the model and the data set folder")
        if args.image is not None:
            raise InputError("--image applies to --pred CSVs only; --model evaluates a data set, or a --split of it")


def _check_pred_paths(args: argparse.Namespace) -> None:
    """Refuses the combinations of file and folder that do not pair up, naming the
    valid ones; the library checks the rest (split.csv, names)."""
    truth_flag = "--truth" if args.truth is not None else "--data"
    truth: Path = args.truth if args.truth is not None else args.data
    for flag, path in (("--pred", args.pred), (truth_flag, truth)):
        if not path.exists():
            raise MissingFileError(f"{flag}: no such file or folder: {path}")
    if truth_flag == "--data" and not (truth / "points").is_dir():
        raise InputError(f"--data {truth}: expected a data set folder with points/ inside (a folder of CSVs goes to --truth)")
    if truth.is_file():
        if args.pred.is_dir():
            raise InputError(
                f"--truth {truth} is one image's annotations but --pred {args.pred} is a folder: give that image's "
                f"CSV file as --pred, or a folder of annotations as --truth (valid: {_PRED_FORMS})"
            )
        for flag in ("split", "image"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag} selects from a folder of annotations, but --truth {truth} is one file (valid: {_PRED_FORMS})")
    elif args.pred.is_file():
        if args.split is not None:
            raise InputError(f"--split selects images for a folder of predictions, but --pred {args.pred} is one file (valid: {_PRED_FORMS})")
        if args.image is None:
            points = truth / "points" if (truth / "points").is_dir() else truth
            hint = f", here --image {args.pred.stem}" if (points / f"{args.pred.stem}.csv").is_file() else ""
            raise InputError(
                f"--pred {args.pred} is one image's CSV but {truth_flag} {truth} is a folder: name its image "
                f"with --image NAME{hint}, or give its annotation CSV as --truth"
            )


def run(args: argparse.Namespace) -> int:
    """Runs ``micronet evaluate``; returns the exit status. User errors raise ValueError
    or FileNotFoundError with a one-line message."""
    _check_sources(args)
    if args.model is not None:
        return _run_model(args)
    from micronet.runtime.evaluation.evaluate import plot_pr_curve, score_predictions

    truth = args.truth if args.truth is not None else args.data
    result = score_predictions(args.pred, truth, args.radius, split=args.split, image=args.image, threshold=args.threshold)
    print(result.format())
    if args.json is not None:
        out = {**result.to_dict(), "pred": str(args.pred), "truth": str(truth), "split": args.split, "image": args.image}
        _write_json(args.json, out, allow_nan=False)
        if result.sweep is None:
            print(f"wrote {args.json} (no PR curve: the detections carry no scores)")
            return 0
        try:
            png = plot_pr_curve(result, args.json.with_suffix(".pr.png"), title=f"{args.pred.name} on {truth.name} {args.split or ''}")
        except MissingPackageError as exc:
            # The plot is a by-product here (the JSON holds the curve): say why it is absent.
            print(f"wrote {args.json} (no PR plot: {exc})")
            return 0
        print(f"wrote {args.json} and {png}")
    return 0


def _checkpoint_runner() -> Any:
    """The trainer's checkpoint runner (torch): imported only for a checkpoint."""
    try:
        from micronet.trainer.validate import checkpoint_candidates
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "safetensors"):
            raise
        raise MissingPackageError(f"evaluating a checkpoint needs {exc.name}: pip install 'micronet-sdk[train]'") from exc
    return checkpoint_candidates


def _run_model(args: argparse.Namespace) -> int:
    # Loads the model stack only when asked (torch only for a checkpoint).
    from micronet.runtime.bundled import BUNDLED_MODELS, bundled_tta, resolve_model
    from micronet.runtime.evaluation.evaluate import (
        MODEL_SUFFIXES,
        evaluate_model_file,
        plot_pr_curve,
    )

    model = resolve_model(args.model)
    if not model.exists():
        raise MissingFileError(f"--model: no such file {args.model}; expected a model file or a bundled model: {', '.join(BUNDLED_MODELS)}")
    if model.suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(
            f"--model {args.model}: expected a .safetensors checkpoint, .onnx model or .engine file, "
            f"or a bundled model: {', '.join(BUNDLED_MODELS)}"
        )
    if (args.tta or args.tta_mode) and model.suffix.lower() == ".safetensors":
        raise InputError(
            f"--tta runs the flips in the Detector (an .onnx or .engine model, or a bundled model: {', '.join(BUNDLED_MODELS)}), "
            f"not on the checkpoint {args.model}: export it (micronet export) and evaluate the .onnx, or leave out --tta"
        )
    tta = bundled_tta(args.model, args.tta_mode or (True if args.tta else None))  # without --tta, the bundled name's own
    options: dict[str, Any] = {"tta": tta} if tta else {}
    if model.suffix.lower() == ".safetensors":
        options["checkpoint"] = _checkpoint_runner()
    result = evaluate_model_file(model, args.data, split=args.split, radius=args.radius, threshold=args.threshold, **options)
    print(result.format())
    classes = _classes(model, args, options)
    if args.json is not None:
        out = {**result.to_dict(), "model": str(args.model), "model_file": str(model), "data": str(args.data), "split": args.split}
        if classes is not None:
            out["classification"] = classes.as_dict()
        _write_json(args.json, out, default=lambda v: None)
        title = f"{model.name} on {Path(args.data).name} {args.split or ''}"
        png = plot_pr_curve(result, args.json.with_suffix(".pr.png"), title=title)
        print(f"wrote {args.json} and {png}")
    return 0


def _classes(model: Path, args: argparse.Namespace, options: dict[str, Any]) -> Any:
    """With a classifying model (an ``.onnx``/``.engine`` or bundled one) and a data set
    with ``classes/``: the SC-CNN classification table (and the confusion matrix beside
    ``--json``); else None."""
    if model.suffix.lower() == ".safetensors" or not (Path(args.data) / "classes").is_dir():
        return None
    from micronet.runtime.detector import Detector
    from micronet.runtime.evaluation.class_metrics import (
        evaluate_classes,
        plot_confusion,
    )
    from micronet.runtime.evaluation.datasets import load_point_folder

    det = Detector(str(model), threshold=args.threshold, **options)
    if not det.class_names:
        return None
    scores = evaluate_classes(det, load_point_folder(args.data, args.split), 6.0 if args.radius is None else args.radius)
    print(f"\nclassification among matched, labelled nuclei (SC-CNN protocol): weighted F1 {scores.weighted_f1:.4f}, "
          f"accuracy {scores.accuracy:.4f}")
    print(scores.table())
    if args.json is not None:
        try:
            print(f"wrote {plot_confusion(scores, args.json.with_suffix('.confusion.png'))}")
        except ImportError:
            pass
    return scores


def _write_json(path: Path, data: dict[str, Any], **options: Any) -> None:
    from micronet.runtime.files import replace_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, **options) + "\n"
    replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
