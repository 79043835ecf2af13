"""Weight interpolation (trainer/interpolate.py, WiSE-FT): the ends are the two networks,
the middle is the tensors' midpoint, a head only the base has is kept, and checkpoints of
different networks are refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from micronet.runtime.errors import InputError  # noqa: E402
from micronet.runtime.model_info import ModelInfo  # noqa: E402
from micronet.trainer.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from micronet.trainer.interpolate import interpolate, main  # noqa: E402
from micronet.trainer.models import create_model  # noqa: E402

CLASSES = ("a", "b", "c")


def _net(seed: int, classes: tuple[str, ...] = (), widths=(8, 16, 32, 32)) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = create_model("micronet_tiny", widths=widths, context_channels=4, classes=classes)
    net.train()
    with torch.no_grad():  # batch-norm statistics that differ between the two
        net(torch.randn(2, 3, 32, 32) * (1 + seed))
    return net.eval()


def test_ends_are_the_two_networks_and_the_middle_is_the_midpoint():
    with torch.no_grad():
        a, b = _net(0), _net(1)
        state_a = {k: v.clone() for k, v in a.state_dict().items()}
        state_b = b.state_dict()
        torch.testing.assert_close(interpolate(_net(0), _net(1), 0.0).state_dict(), state_a)
        one = interpolate(_net(0), _net(1), 1.0).state_dict()
        for name, value in state_b.items():
            if value.is_floating_point():
                torch.testing.assert_close(one[name], value)
            else:  # integer counters stay the base's
                assert torch.equal(one[name], state_a[name])
        mid = interpolate(_net(0), _net(1), 0.5).state_dict()
        for name, value in state_a.items():
            if value.is_floating_point():
                torch.testing.assert_close(mid[name], (value + state_b[name]) / 2)


def test_a_head_only_the_base_has_is_kept():
    base, det = _net(0, CLASSES), _net(1)
    head = {k: v.clone() for k, v in base.state_dict().items() if k.startswith(("class_head", "class_context"))}
    assert head
    mixed = interpolate(base, det, 0.5).state_dict()
    for name, value in head.items():
        torch.testing.assert_close(mixed[name], value)


def test_other_networks_and_bad_alpha_are_refused():
    with pytest.raises(InputError, match="not the same network"):
        interpolate(_net(0), _net(1, CLASSES), 0.5)  # the second has a head the base lacks
    with pytest.raises(InputError, match="shape"):
        interpolate(_net(0), _net(1, widths=(8, 16, 32, 24)), 0.5)
    with pytest.raises(InputError, match="outside"):
        interpolate(_net(0), _net(1), 1.5)


def test_command_writes_a_checkpoint_that_records_the_mix(tmp_path):
    base, other = _net(0, CLASSES), _net(1)
    save_checkpoint(tmp_path / "base.safetensors", base, ModelInfo(base.config_dict(), [128.0] * 3, [64.0] * 3, 0.55, 0.5))
    save_checkpoint(tmp_path / "other.safetensors", other, ModelInfo(other.config_dict(), [128.0] * 3, [64.0] * 3, 0.55, 0.7))
    assert main([str(tmp_path / "base.safetensors"), str(tmp_path / "other.safetensors"), "--alpha", "0.25", "-o", str(tmp_path / "out.safetensors")]) == 0
    model, info = load_checkpoint(tmp_path / "out.safetensors")
    assert info.threshold == 0.5 and info.architecture["classes"] == list(CLASSES)
    assert info.provenance["interpolation"]["alpha"] == 0.25
    want = interpolate(_net(0, CLASSES), _net(1), 0.25).state_dict()
    torch.testing.assert_close(model.state_dict(), want)
