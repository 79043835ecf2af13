"""Cuts the bundled demo image ``runtime/models/demo_cmu1.png``: a 512×512 region of the
CMU-1 slide (``CMU-1-Small-Region.svs``, the OpenSlide test data, freely distributable),
level 0 at 0.499 µm/px, from x = 880, y = 760: epidermis and dermis, dense nuclei, some
stroma and a little glass. The pixel size goes into the PNG's pHYs chunk, so
``micronet detect --demo`` reads it and resamples to the model's 0.55 µm/px. The image is
also a reference image of ``micronet check`` (real H&E beside the synthetic
``sample.png``).

    python tools/make_demo_image.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runtime" / "models" / "demo_cmu1.png"
X, Y, SIZE = 880, 760, 512
MPP = 0.499  # the slide's level 0 (Aperio ImageDescription MPP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs")
    args = parser.parse_args()
    level0 = tifffile.imread(args.slide, key=0)  # (2967, 2220, 3) uint8
    crop = np.ascontiguousarray(level0[Y : Y + SIZE, X : X + SIZE])
    Image.fromarray(crop).save(OUT, optimize=True, dpi=(25400 / MPP, 25400 / MPP))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
