"""A class head on a frozen detector: the detector's map stays bit for bit, only the head
trains, the head's fast path (cached features, transposed convolutions at single pixels)
equals the full model, and a fitted checkpoint exports to ONNX with the class output."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from micronet.runtime.errors import InputError  # noqa: E402
from micronet.trainer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from micronet.trainer.class_head import ClassHeadConfig, _View, fit_class_head, head_logits, with_class_head  # noqa: E402
from micronet.trainer.models import MicroNet, MicroNetConfig  # noqa: E402


def _detector(seed: int = 0) -> MicroNet:
    torch.manual_seed(seed)
    return MicroNet(MicroNetConfig(widths=(8, 16, 32, 32), context_channels=4)).eval()


def test_the_detector_map_stays_and_only_the_head_trains():
    det = _detector()
    model = with_class_head(det, ("a", "b", "c"), class_context=4).eval()
    x = torch.randn(1, 3, 75, 61)
    with torch.no_grad():
        assert torch.equal(det(x), model.forward_all(x)[0])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"class_head", "class_context"}


@pytest.mark.parametrize("scale,depth", [(1, 0), (4, 0), (4, 1)])
def test_the_fast_head_path_equals_forward_all_at_every_pixel_offset(scale, depth):
    model = with_class_head(_detector(1), ("a", "b", "c"), class_context=4, class_scale=scale, class_depth=depth).eval()
    with torch.no_grad():  # statistics away from the identity, so a wrong gather shows
        for m in list(model.class_head.modules()) + list(model.class_context.modules()):
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.bias.uniform_(-1, 1)
        x = torch.randn(1, 3, 75, 61)  # not a multiple of 8: the crops of _fit act
        _, logits = model.forward_all(x)
        agg, decoder = model._features(x)
        rows, cols = torch.meshgrid(torch.arange(0, 75, 3), torch.arange(0, 61, 1), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()  # every offset within the 8×8 and 4×4 cells
        n = len(rows)
        view = _View(0, agg[0][:, rows, cols].T, rows, cols, torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool),
                     {k: v[0] for k, v in decoder.items()}, model.pool_cells(agg)[0] if scale == 4 else None)
        np.testing.assert_allclose(head_logits(model, view).numpy(), logits[0][:, rows, cols].T.numpy(), atol=1e-5)


def test_class_context_without_classes_is_refused():
    with pytest.raises(InputError, match="class_context"):
        MicroNetConfig(class_context=4)
    with pytest.raises(InputError, match="class_scale"):
        MicroNetConfig(classes=("a",), class_context=0, class_scale=4)
    with pytest.raises(InputError, match="class_depth"):
        MicroNetConfig(classes=("a",), class_context=4, class_scale=1, class_depth=1)
    # a head without blocks is described as before the field existed (bundled metadata unchanged)
    assert "class_depth" not in MicroNet(MicroNetConfig(classes=("a",), class_context=4, class_scale=4)).config_dict()


def test_a_quarter_head_with_blocks_round_trips_and_exports_the_torch_logits(tmp_path):
    """class_depth survives the checkpoint, and ONNX Runtime's class output equals
    forward_all's logits (an odd-sized input, so the resize and crops act)."""
    import onnxruntime as ort

    from micronet.export.onnx import export_onnx
    from micronet.runtime.model_info import ModelInfo

    model = with_class_head(_detector(4), ("a", "b", "c"), class_context=4, class_scale=4, class_depth=1).eval()
    with torch.no_grad():
        for m in model.class_head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    info = ModelInfo(model.config_dict(), [128.0] * 3, [64.0] * 3, 0.55, 0.5)
    save_checkpoint(tmp_path / "m.safetensors", model, info)
    loaded, loaded_info = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded_info.architecture["class_depth"] == 1 and loaded.config.class_depth == 1
    out = export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(5).integers(0, 255, (1, 77, 83, 3), dtype=np.uint8)
    feeds = {session.get_inputs()[0].name: image}
    onnx_logits = session.run(None, feeds)[1]
    x = (torch.from_numpy(image).permute(0, 3, 1, 2).float() - 128.0) / 64.0
    with torch.no_grad():
        torch_logits = loaded.forward_all(x)[1].numpy()
    assert onnx_logits.shape[-2:] == (77, 83)
    np.testing.assert_allclose(onnx_logits.reshape(torch_logits.shape), torch_logits, atol=2e-4)


def _point_folder(root, rng):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    (root / "classes").mkdir()
    names = [f"im{i}" for i in range(3)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        pts = rng.uniform(4, 60, (12, 2)).round(1)
        (root / "points" / f"{name}.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in pts))
        kinds = rng.choice(["epithelial", "fibroblast", "inflammatory", "others"], len(pts))
        (root / "classes" / f"{name}.csv").write_text("x,y,class\n" + "".join(f"{x},{y},{k}\n" for (x, y), k in zip(pts[:-2], kinds)))
    (root / "split.csv").write_text("name,split\n" + "".join(f"{n},train\n" for n in names))
    (root / "dataset.json").write_text('{"mpp": 0.55}')


def test_a_fitted_checkpoint_keeps_the_detector_and_exports_two_outputs(tmp_path):
    from micronet.export.onnx import export_onnx
    from micronet.runtime.model_info import ModelInfo

    rng = np.random.default_rng(0)
    _point_folder(tmp_path / "data", rng)
    det = _detector(2)
    info = ModelInfo(det.config_dict(), [128.0] * 3, [64.0] * 3, 0.55, 0.5)
    save_checkpoint(tmp_path / "det.safetensors", det, info)
    cfg = ClassHeadConfig(checkpoint=str(tmp_path / "det.safetensors"), out=str(tmp_path / "cls.safetensors"), data=str(tmp_path / "data"),
                          class_context=4, views=2, iterations=3, views_per_step=2, holdout=0.34)
    fit_class_head(cfg)
    model, new_info = load_checkpoint(tmp_path / "cls.safetensors")
    assert new_info.architecture["class_context"] == 4 and "held_out" in new_info.provenance["class_head"]["scores"]
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(det(x), model.forward_all(x)[0])
    out = export_onnx(tmp_path / "cls.safetensors", tmp_path / "cls.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()][1:] and len(session.get_outputs()) == 2


def test_a_quarter_head_cache_serves_any_radius(tmp_path):
    """A head at 1/4 reads whole cached maps: its cache holds no radius, and the trained
    pixels redrawn from it (relabel) are those a fresh cache draws at that radius."""
    from dataclasses import replace

    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.class_head import _cache_key, cache_views, relabel

    _point_folder(tmp_path / "data", np.random.default_rng(1))
    det = _detector(3)
    save_checkpoint(tmp_path / "det.safetensors", det, ModelInfo(det.config_dict(), [128.0] * 3, [64.0] * 3, 0.55, 0.5))
    cfg = ClassHeadConfig(checkpoint=str(tmp_path / "det.safetensors"), out="-", data=str(tmp_path / "data"), class_context=4,
                          class_scale=4, views=3)
    wide = replace(cfg, class_radius_um=3.0)
    assert _cache_key(cfg) == _cache_key(wide) != _cache_key(replace(wide, class_scale=1))
    model = with_class_head(det, cfg.classes, 4, class_scale=4)
    info = load_checkpoint(tmp_path / "det.safetensors")[1]
    cached, _ = cache_views(model, info, cfg)
    for radius_cfg in (cfg, wide):
        fresh, _ = cache_views(model, info, radius_cfg)
        redrawn = relabel(cached, radius_cfg)
        assert len(redrawn) == len(fresh) == 3 * 3
        for a, b in zip(redrawn, fresh):
            for field in ("rows", "cols", "labels", "centre"):
                assert torch.equal(getattr(a, field), getattr(b, field)), field
            assert torch.equal(a.pooled, b.pooled)
    assert sum(len(v.rows) for v in relabel(cached, wide)) > 2 * sum(len(v.rows) for v in cached)
