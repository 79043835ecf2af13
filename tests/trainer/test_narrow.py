"""Narrowing a trained MicroNet (trainer/narrow.py): when the channels it drops are dead,
the narrowed detector computes exactly what the wide one did, wherever the dead channels
sit; a width that would grow is refused; a distillation student narrows its init."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from micronet.runtime.errors import InputError  # noqa: E402
from micronet.trainer.distill import DistillConfig, student_from  # noqa: E402
from micronet.trainer.models import create_model  # noqa: E402
from micronet.trainer.narrow import channel_layout, narrow  # noqa: E402

SMALL = ((8, 16, 32, 32), 4)


def _wide_with_dead_channels(activation: str, seed: int) -> torch.nn.Module:
    """A 12-20-40-36 network (context 6) with trained-like statistics whose channels
    beyond ``SMALL``'s counts, drawn at random in every channel space, output zero."""
    torch.manual_seed(seed)
    wide = create_model("micronet_tiny", widths=(12, 20, 40, 36), context_channels=6, activation=activation)
    wide.train()
    with torch.no_grad():
        for _ in range(2):
            wide(torch.randn(2, 3, 32, 32))
    wide.eval()
    old = (*wide.config.widths, wide.config.context_channels)
    new = (*SMALL[0], SMALL[1])
    modules = dict(wide.named_modules())
    spaces, _ = channel_layout(wide.config)
    with torch.no_grad():
        for size_index, writers in spaces.values():
            dead = torch.randperm(old[size_index])[: old[size_index] - new[size_index]]
            for w in writers:  # every writer of the space: the sum is zero there too
                modules[f"{w}.1"].weight[dead] = 0.0
                modules[f"{w}.1"].bias[dead] = 0.0
    return wide


@pytest.mark.parametrize(("activation", "seed"), [("elu", 0), ("relu", 1)])
def test_narrow_keeps_the_function_when_the_dropped_channels_are_dead(activation, seed):
    wide = _wide_with_dead_channels(activation, seed)
    small = narrow(wide, *SMALL)
    assert not small.training and small.config.widths == SMALL[0] and small.config.context_channels == SMALL[1]
    assert small.config.activation == activation and small.class_head is None
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(small(x), wide(x), rtol=1e-5, atol=1e-5)
    # A live channel is dropped when the width asks for fewer than live: the function changes.
    with torch.no_grad():
        smaller = narrow(wide, (8, 16, 32, 24), 4)
        assert (smaller(x) - wide(x)).abs().max() > 1e-3


def test_narrow_to_the_same_widths_copies_every_weight_and_refuses_to_grow():
    torch.manual_seed(2)
    model = create_model("micronet_tiny").eval()
    same = narrow(model, model.config.widths, model.config.context_channels)
    for (name, a), (_, b) in zip(model.state_dict().items(), same.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(InputError, match="stay or shrink"):
        narrow(model, (8, 16, 64, 32))
    with pytest.raises(InputError, match="stay or shrink"):
        narrow(model, (8, 16, 32, 32), 5)


def test_a_student_narrower_than_its_init_starts_from_the_init_narrowed():
    wide = _wide_with_dead_channels("relu", 3)
    cfg = DistillConfig(teacher="unused", widths=SMALL[0], context_channels=SMALL[1], activation="relu", classes=("a", "b"))
    student = student_from(cfg, wide).eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        proximity, logits = student.forward_all(x)
        torch.testing.assert_close(proximity, wide(x), rtol=1e-5, atol=1e-5)
    assert logits.shape == (1, 2, 40, 48)
