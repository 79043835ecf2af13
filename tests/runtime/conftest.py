"""Shared fixtures of the runtime tests: models, images and the real data.

- ``sample_set``: the bundled sample image and its points as a one-image data set folder.
- ``tiny_model``: ``micronet_tiny`` with random weights and randomised batch-norm
  statistics (so folding them into the convolutions is exercised), exported to ONNX by
  ``micronet.export``; its threshold is set from its own output on a real image.
  Needs torch (tests using it skip without).
- ``sample_set``: the bundled sample image and its points as a one-image data set folder.
- ``blur_onnx``: a hand-built ONNX model with the MicroNet signature whose "proximity"
  is the blurred darkness of the image, so dark round blobs give peaks at their
  centres: a detector with known answers. Needs only onnx.
- ``sample_set``: the bundled sample image and its points as a one-image data set folder.
- ``make_nuclei``: dark Gaussian blobs on a pink background at known centres.
- ``write_pyramid``: an image written as a pyramidal TIFF slide file.

``shared_data`` (the real data folder, skipping when absent) and ``make_tiny_model``
come from ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MODEL_MPP = 0.55  # CRCHistoPhenotypes at 20×


@pytest.fixture(scope="session")
def crchisto_images(shared_data: Path) -> list[np.ndarray]:
    """The first 16 CRCHistoPhenotypes images, ``(500, 500, 3)`` uint8 each."""
    from PIL import Image

    files = sorted((shared_data / "crchisto" / "images").glob("*.png"))[:16]
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(np.asarray(im.convert("RGB")))
    return images


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, make_tiny_model, crchisto_images: list[np.ndarray]) -> tuple[Path, Path]:
    """``(checkpoint, onnx)`` of a tiny random MicroNet, thresholded on a real image."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), crchisto_images[0])


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model: tuple[Path, Path]) -> Path:
    return tiny_model[1]


@pytest.fixture(scope="session")
def detector(tiny_onnx: Path):
    """A CPU ``Detector`` on the tiny model (two threads: the test machine's cores)."""
    from micronet.runtime.detector import Detector

    return Detector(tiny_onnx, device="cpu", threads=2)


def build_blur_model(path: Path, *, threshold: float = 0.2, mpp: float = MODEL_MPP, kernel: int = 5, metadata: bool = True) -> Path:
    """An ONNX model with MicroNet's signature (uint8 N×H×W×3 → float32 N×1×H×W) whose
    map is the image's darkness ``1 − mean(RGB)/255`` blurred twice by a ``kernel²``
    box filter. ``metadata=False`` leaves out the ``"micronet"`` entry."""
    onnx = pytest.importorskip("onnx")
    from micronet.runtime.model_info import METADATA_KEY, ModelInfo
    from onnx import TensorProto, helper

    pads = [kernel // 2] * 4
    nodes = [
        helper.make_node("Cast", ["image"], ["rgb"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["rgb"], ["mean"], axes=[3], keepdims=1),  # (N, H, W, 1)
        helper.make_node("Sub", ["c255", "mean"], ["dark"]),
        helper.make_node("Mul", ["dark", "inv255"], ["dark01"]),
        helper.make_node("Transpose", ["dark01"], ["nchw"], perm=[0, 3, 1, 2]),  # (N, 1, H, W)
        helper.make_node("AveragePool", ["nchw"], ["blur1"], kernel_shape=[kernel, kernel], pads=pads, count_include_pad=0),
        helper.make_node("AveragePool", ["blur1"], ["proximity"], kernel_shape=[kernel, kernel], pads=pads, count_include_pad=0),
    ]
    graph = helper.make_graph(
        nodes,
        "blurred_darkness",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("proximity", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [
            helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
            helper.make_tensor("inv255", TensorProto.FLOAT, [], [1.0 / 255.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        info = ModelInfo(
            architecture={"name": "blurred_darkness", "kernel": kernel},
            mean=[0.0, 0.0, 0.0],
            std=[1.0, 1.0, 1.0],
            mpp=mpp,
            threshold=threshold,
            min_distance=3,
        )
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def blur_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The blur model; its receptive radius is 2 · (kernel // 2) = 4 px, so a tile margin
    of 8 covers it plus ``min_distance``. Its architecture is not MicroNet's, so a
    ``Detector`` needs ``tile_margin`` given."""
    return build_blur_model(tmp_path_factory.mktemp("blur_model") / "blur.onnx")


@pytest.fixture(scope="session")
def make_blur_model():
    """:func:`build_blur_model`, for variants (other metadata, threshold, pixel size)."""
    return build_blur_model


@pytest.fixture(scope="session")
def make_nuclei():
    """:func:`micronet.runtime.diagnostics.synthetic.nuclei_image`: blobs at known centres."""
    from micronet.runtime.diagnostics.synthetic import nuclei_image

    return nuclei_image


@pytest.fixture()
def sample_set(tmp_path: Path) -> Path:
    """The bundled sample image (CRCHisto, 0.55 µm/px) and its points as a one-image
    data set folder."""
    import shutil

    models = Path(__file__).resolve().parents[2] / "runtime" / "models"
    root = tmp_path / "sample_set"
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    shutil.copy(models / "sample.png", root / "images" / "sample.png")
    shutil.copy(models / "sample.csv", root / "points" / "sample.csv")
    (root / "dataset.json").write_text('{"mpp": 0.55}')
    return root


def _write_pyramid(path: Path, image: np.ndarray, mpp: float | None, downsamples: tuple[int, ...] = (4,), tile: int = 256) -> Path:
    """Writes an RGB image as a tiled, JPEG-compressed pyramidal TIFF (levels in SubIFDs),
    with the pixel size in the resolution tags (centimetre units) unless ``mpp`` is None."""
    import tifffile
    from PIL import Image

    def resolution(factor: int) -> dict:
        if mpp is None:
            return {}
        return {"resolution": (1e4 / (mpp * factor), 1e4 / (mpp * factor)), "resolutionunit": "CENTIMETER"}

    options = {"tile": (tile, tile), "compression": "jpeg", "compressionargs": {"level": 90}, "photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, subifds=len(downsamples), **options, **resolution(1))
        for factor in downsamples:
            reduced = np.asarray(Image.fromarray(image).reduce(factor))
            tif.write(reduced, subfiletype=1, **options, **resolution(factor))
    return path


@pytest.fixture(scope="session")
def write_pyramid():
    """``write_pyramid(path, image, mpp, downsamples=(4,), tile=256) -> path``: an RGB image
    as a tiled, JPEG-compressed pyramidal TIFF slide file (needs tifffile)."""
    pytest.importorskip("tifffile")
    return _write_pyramid
