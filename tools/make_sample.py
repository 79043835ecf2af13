"""Renders the bundled demo image ``runtime/models/sample.png``: a synthetic H&E-like
field (eosin-pink stroma, haematoxylin-purple elliptical nuclei with chromatin texture),
512×512 at 0.55 µm/px. Synthetic on purpose: the real data sets may not be copied into
the repository. Their true centres go to ``sample.csv`` next to it.

    python tools/make_sample.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

OUT = Path(__file__).resolve().parents[1] / "runtime" / "models"


def render(size: int = 512, n: int = 200, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Stroma: pink with fibrous low-frequency texture and a few pale (glass/lumen) areas.
    tex = ndi.gaussian_filter(rng.standard_normal((size, size)), 6)
    tex /= tex.std()
    lumen = ndi.gaussian_filter(rng.standard_normal((size, size)), 40)
    lumen = np.clip((lumen / lumen.std() - 1.2) * 2, 0, 1)
    base = np.array([236, 170, 205], np.float64)
    img = base[None, None, :] + tex[..., None] * np.array([6, 14, 8])
    img = img * (1 - lumen[..., None]) + np.array([245, 235, 242]) * lumen[..., None]
    # Nuclei: ellipses 8-16 px across, rejected on overlap and in lumens.
    yy, xx = np.mgrid[0:size, 0:size]
    centres: list[tuple[float, float]] = []
    nuclear = np.zeros((size, size))
    tries = 0
    while len(centres) < n and tries < 20 * n:
        tries += 1
        cx, cy = rng.uniform(6, size - 6, 2)
        if lumen[int(cy), int(cx)] > 0.3 or any((cx - x) ** 2 + (cy - y) ** 2 < 16**2 for x, y in centres):
            continue
        a, b = rng.uniform(5.5, 8.0), rng.uniform(4.0, 6.0)
        t = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        nuclear = np.maximum(nuclear, np.clip(1.5 - (u**2 + v**2), 0, 1) * rng.uniform(0.75, 1.0))
        centres.append((cx, cy))
    chromatin = 1 + 0.25 * ndi.gaussian_filter(rng.standard_normal((size, size)), 1.0) / 0.2
    dark = np.clip(nuclear * chromatin, 0, 1.2)
    haem = np.array([95, 55, 140], np.float64)
    img = img * (1 - dark[..., None] * 0.85) + haem * dark[..., None] * 0.85
    img = ndi.gaussian_filter(img, (0.8, 0.8, 0)) + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), np.array(centres)


def main() -> None:
    img, centres = render()
    OUT.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(OUT / "sample.png", optimize=True)
    np.savetxt(OUT / "sample.csv", centres, delimiter=",", header="x,y", comments="", fmt="%.2f")
    print(f"wrote {OUT / 'sample.png'} ({len(centres)} nuclei)")


if __name__ == "__main__":
    main()
