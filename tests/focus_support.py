"""What the focus tests share: an image out of focus by a known Gaussian. Importable from
any test module: pytest puts this folder on ``sys.path`` for its ``conftest.py``."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """Each channel blurred by a Gaussian of ``sigma`` pixels, back to uint8."""
    out = np.stack([ndimage.gaussian_filter(image[..., c].astype(np.float64), sigma) for c in range(3)], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
