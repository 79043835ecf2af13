"""MicroNet architecture: any input size, block numbering, registry, cost."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from micronet.trainer.models import MicroNetConfig, count_flops, create_model, list_models, model_from_config  # noqa: E402


@pytest.mark.parametrize("size", [(500, 500), (333, 517), (1001, 999), (75, 75), (9, 13)])
def test_any_input_size_gives_a_map_of_the_same_size(size):
    net = create_model("micronet_tiny").eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, *size))
    assert out.shape == (1, 1, *size)


def test_ten_blocks_and_freezing_the_first_k():
    net = create_model("micronet_tiny")
    blocks = net.blocks()
    assert len(blocks) == 10
    counted = {id(p) for blk in blocks for m in blk for p in m.parameters()}
    assert counted == {id(p) for p in net.parameters()}, "every parameter belongs to exactly one block"


def test_registry_lists_valid_names_and_ignores_none_overrides():
    with pytest.raises(ValueError, match="valid names: .*micronet_tiny"):
        create_model("micronet_huge")
    net = create_model("micronet_tiny", widths=None, dropout=None)
    assert net.config.widths == (8, 16, 32, 32)
    assert create_model("micronet", widths=(4, 8, 8, 8)).config.widths == (4, 8, 8, 8)
    assert "micronet" in list_models()


def test_config_round_trip_and_validation():
    net = create_model("micronet_tiny")
    again = model_from_config(net.config_dict())
    assert again.config == net.config
    with pytest.raises(ValueError, match="widths"):
        MicroNetConfig(widths=(8, 16, 32))
    with pytest.raises(ValueError, match="not supported"):
        model_from_config({"name": "unet"})


def test_default_model_is_lean():
    # Issue target: <= 30 GFLOP per 500x500 image (docs/architecture.md has the trade-off).
    gflop = count_flops(create_model("micronet"), 500, 500) / 1e9
    assert 15 < gflop <= 30
