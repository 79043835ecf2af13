"""Caches a frozen network's block-10 features around labelled nuclei, for fitting a
class head on a frozen trunk (``trainer/class_head.py``).

For each CRCHisto *training* image (never validation or test), under several views
(the dihedral flips, and photometric variants from ``trainer/augment.py``), the
network's aggregated block-10 input (``MicroNet._aggregate``) is computed once; the
feature vectors at every pixel within ``--radius`` px of a labelled nucleus are kept
with the nucleus's class, its image and its offset. Writes one ``.npz``.

    python tools/class_features.py trainer/pretrained/micronet_crchisto.safetensors \
        --data ../shared/data/crchisto -o runs/classhead/features.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from micronet.runtime.evaluation.class_metrics import read_class_labels
from micronet.runtime.evaluation.datasets import load_point_folder
from micronet.runtime.files import replace_atomically
from micronet.trainer.class_head import VIEWS, disc_offsets, labelled_pixels, view_image
from micronet.trainer.distill import CRCHISTO_CLASSES
from micronet.trainer.checkpoint import load_checkpoint
from micronet.trainer.validate import normalize

BLOCKS = ("block3", "block4", "block5", "block6", "block7", "block8")  # encoder 1/2, 1/4, 1/8; decoder 1/8, 1/4, 1/2


@torch.no_grad()
def _features(model: torch.nn.Module, image: np.ndarray, mean: list[float], std: list[float], deep: bool = False) -> np.ndarray:
    """Block 10's input ``(C, H, W)``; with ``deep``, the encoder's outputs at 1/2, 1/4 and
    1/8 resolution too, repeated to full resolution (nearest) and stacked after it."""
    x = normalize(image[None], mean, std)
    if not deep:
        return model._aggregate(x)[0].numpy()
    grabbed: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, b).register_forward_hook(lambda _m, _i, out, b=b: grabbed.__setitem__(b, out)) for b in BLOCKS]
    agg = model._aggregate(x)
    for h in hooks:
        h.remove()
    size = agg.shape[-2:]
    deep_maps = [torch.nn.functional.interpolate(grabbed[b], size=size, mode="nearest") for b in BLOCKS]
    return torch.cat([agg, *deep_maps], dim=1)[0].numpy()


def _unview(feat: np.ndarray, flip_r: bool, flip_c: bool) -> np.ndarray:
    if flip_r:
        feat = feat[:, ::-1]
    if flip_c:
        feat = feat[:, :, ::-1]
    return feat


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", default="../shared/data/crchisto")
    p.add_argument("--radius", type=int, default=3, help="pixels around each labelled nucleus kept (default 3)")
    p.add_argument("--views", type=int, default=len(VIEWS), help=f"how many of the {len(VIEWS)} views (default all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deep", action="store_true", help="also the encoder's outputs at 1/2, 1/4, 1/8 resolution (nearest)")
    p.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = load_checkpoint(args.checkpoint)
    data = load_point_folder(args.data, "train")
    offsets = disc_offsets(args.radius)
    feats, labels, image_ids, view_ids, dists = [], [], [], [], []
    jobs = [(i, v) for i in range(len(data)) for v in range(args.views)]
    for i, v in tqdm(jobs, desc="features"):
        name, image, points = data.names[i], data.images[i], np.asarray(data.points[i], np.float64).reshape(-1, 2)
        lab = read_class_labels(data.root, name, points, CRCHISTO_CLASSES)
        flip_r, flip_c, _ = VIEWS[v]
        feat = _unview(_features(model, view_image(image, VIEWS[v]), info.mean, info.std, args.deep), flip_r, flip_c)
        # The features are back in the image's own orientation: the identity view's pixels.
        rows, cols, lab_px, distance = labelled_pixels(points, lab, feat.shape[1:], (False, False, None), offsets)
        feats.append(feat[:, rows, cols].T.astype(np.float16))
        labels.append(lab_px)
        dists.append(distance.astype(np.float16))
        image_ids.append(np.full(len(rows), i, np.int16))
        view_ids.append(np.full(len(rows), v, np.int8))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(features=np.concatenate(feats), labels=np.concatenate(labels).astype(np.int8),
                  image=np.concatenate(image_ids), view=np.concatenate(view_ids), distance=np.concatenate(dists),
                  names=np.array(data.names), classes=np.array(CRCHISTO_CLASSES))

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)

    replace_atomically(out, write)
    print(f"{out}: {len(arrays['labels'])} feature vectors of {arrays['features'].shape[1]} channels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
