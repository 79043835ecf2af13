"""MicroNet architecture: any input size, block numbering, registry, cost."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from micronet.trainer.models import (  # noqa: E402
    MicroNetConfig,
    count_flops,
    create_model,
    list_models,
    model_from_config,
    with_activation,
)
from micronet.trainer.widen import widen  # noqa: E402


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
        model_from_config({"name": "segnet"})


def test_default_model_is_lean():
    # Issue target: <= 30 GFLOP per 500x500 image (docs/architecture.md has the trade-off).
    gflop = count_flops(create_model("micronet"), 500, 500) / 1e9
    assert 15 < gflop <= 30


def test_activation_option_relu_and_swap_keeps_every_weight():
    elu = create_model("micronet_tiny").eval()
    assert any(isinstance(m, torch.nn.ELU) for m in elu.modules())
    relu = create_model("micronet_tiny", activation="relu").eval()
    assert not any(isinstance(m, torch.nn.ELU) for m in relu.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in relu.modules()) == sum(isinstance(m, torch.nn.ELU) for m in elu.modules())
    swapped = with_activation(elu, "relu")
    assert swapped.config.activation == "relu" and elu.config.activation == "elu"
    for (k, a), (k2, b) in zip(elu.state_dict().items(), swapped.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        # Same weights, other nonlinearity: the maps differ (ELU's negative side is gone).
        assert not torch.allclose(elu(x), swapped(x))
        rebuilt = model_from_config(swapped.config_dict()).eval()
        rebuilt.load_state_dict(swapped.state_dict())
        assert torch.equal(rebuilt(x), swapped(x))
    # Checkpoints written before the option existed rebuild with the paper's ELU.
    old = {k: v for k, v in elu.config_dict().items() if k != "activation"}
    assert model_from_config(old).config.activation == "elu"
    with pytest.raises(ValueError, match="activation"):
        create_model("micronet_tiny", activation="gelu")


@pytest.mark.parametrize("size", [(40, 40), (37, 53)])
def test_widen_keeps_the_function_and_every_old_weight(size):
    torch.manual_seed(0)
    narrow = create_model("micronet_tiny")
    narrow.train()
    for _ in range(2):  # non-trivial batch-norm statistics
        narrow(torch.randn(2, 3, 32, 32))
    narrow.eval()
    wide = widen(narrow, (16, 24, 48, 40), 6).eval()
    assert wide.config.widths == (16, 24, 48, 40) and wide.config.context_channels == 6
    assert sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in narrow.parameters())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), rtol=1e-5, atol=1e-5)
    # The concatenated input of block 7 keeps its two parts apart: d3's old channels first,
    # the upsampled map's old channels from the new width of d3 on.
    w_old, w_new = narrow.block7.conv1[0].weight, wide.block7.conv1[0].weight
    torch.testing.assert_close(w_new[:32, :32], w_old[:, :32])
    torch.testing.assert_close(w_new[:32, 48:80], w_old[:, 32:])
    assert torch.count_nonzero(w_new[:32, 32:48]) == 0 and torch.count_nonzero(w_new[:32, 80:]) == 0
    # Training moves it away from the narrow network (the new channels are live).
    wide.train()
    loss = wide(x).square().mean()
    loss.backward()
    assert wide.block10[2].weight.grad[:, 8:].abs().sum() > 0
    with pytest.raises(ValueError, match="stay or grow"):
        widen(narrow, (4, 16, 32, 32))
