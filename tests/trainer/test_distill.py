"""Distillation pieces: the student starts as the init network (a narrower context keeps
the channels that matter), class targets mark labelled nuclei only, configs are checked."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from micronet.runtime.errors import InputError  # noqa: E402
from micronet.trainer.distill import DistillConfig, _class_target, student_from  # noqa: E402
from micronet.trainer.models import create_model  # noqa: E402


def test_narrower_student_computes_the_init_when_dropped_channels_are_dead():
    torch.manual_seed(0)
    init = create_model("micronet_tiny", activation="relu").eval()  # widths 8-16-32-32, context 4
    with torch.no_grad():
        for d in init.config.context_depths:
            bn = init.context[str(d)][1]
            bn.weight.copy_(torch.tensor([0.0, 1.5, 0.0, -2.0]))  # channels 0 and 2: dead after ReLU
            bn.bias.copy_(torch.tensor([0.0, 0.1, 0.0, 0.2]))
            bn.running_mean.uniform_(-0.2, 0.2)
    cfg = DistillConfig(teacher="unused", widths=(8, 16, 32, 32), context_channels=2, classes=("a", "b"))
    student = student_from(cfg, init).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        proximity, logits = student.forward_all(x)
        np.testing.assert_allclose(proximity.numpy(), init(x).numpy(), atol=1e-5)
    assert logits.shape == (1, 2, 48, 40)


def test_student_refuses_an_init_narrower_than_itself():
    init = create_model("micronet_tiny")
    with pytest.raises(InputError, match="never wider"):
        student_from(DistillConfig(teacher="unused", widths=(16, 32, 64, 64)), init)


def test_class_target_marks_pixels_near_labelled_centres_only():
    labelled = np.array([[5.0, 5.0], [14.0, 3.0]])
    target = _class_target(labelled, np.array([2, 0]), 20, radius=2.5)
    assert target[5, 5] == 2 and target[3, 14] == 0
    assert target[5, 7] == 2 and target[5, 8] == -1  # within 2.5 px, and beyond
    assert (target >= 0).sum() == 2 * 21  # two discs of radius 2.5: 21 pixels each
    assert (_class_target(np.zeros((0, 2)), np.zeros(0, np.int64), 8, 2.0) == -1).all()


def test_unknown_config_keys_are_refused_with_the_valid_ones():
    with pytest.raises(InputError, match="valid: teacher"):
        DistillConfig.from_dict({"teacher": "t", "iteratons": 3})


@pytest.mark.parametrize("classes", [(), ("epithelial", "fibroblast", "inflammatory", "others")])
def test_sources_of_a_folder_with_classes_serve_a_detection_only_student_too(tmp_path, classes):
    """A student without a class head (classes ()) trains on a point folder that has
    phenotype labels: its sources carry no labels instead of failing on them."""
    from PIL import Image

    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.checkpoint import save_checkpoint
    from micronet.trainer.distill import load_sources

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for sub in ("images", "points", "classes"):
        (root / sub).mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        pts = rng.uniform(4, 44, (6, 2)).round(1)
        (root / "points" / f"{name}.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in pts))
        (root / "classes" / f"{name}.csv").write_text("x,y,class\n" + "".join(f"{x},{y},fibroblast\n" for x, y in pts[:4]))
    (root / "split.csv").write_text("name,split\na,train\nb,train\n")
    (root / "dataset.json").write_text('{"mpp": 0.55}')
    teacher = create_model("micronet_tiny").eval()
    save_checkpoint(tmp_path / "t.safetensors", teacher, ModelInfo(teacher.config_dict(), [128.0] * 3, [64.0] * 3, 0.55, 0.5))
    cfg = DistillConfig(teacher=str(tmp_path / "t.safetensors"), data=str(root), teacher_cache=str(tmp_path / "maps"),
                        tta=False, classes=classes)
    sources = load_sources(cfg, 0.55, 0.55)
    assert len(sources) == 2 and all(s.points is not None and len(s.points) == 6 for s in sources)
    if classes:
        assert all(len(s.labels) == 4 and (s.labels == 1).all() for s in sources)
    else:
        assert all(s.labelled is None for s in sources)
