"""Baselines of the seed paper's Table 1 (FCN-8s, U-Net, FCRN-A/B, FRCN): any input size,
checkpoint round trip, trainable, exportable, paper-sized by default."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from micronet.trainer.models import (  # noqa: E402
    count_flops,
    create_model,
    list_models,
    map_output,
    model_from_config,
)

# Small widths keep every test fast; the paper's are tested for size only.
SMALL = {"fcn": 4, "unet": 4, "fcrn_a": 4, "fcrn_b": 4, "frcn": 4}
KINDS = {
    "fcn": ("disk", "sigmoid"),
    "unet": ("disk", "sigmoid"),
    "fcrn_a": ("density", "linear"),
    "fcrn_b": ("density", "linear"),
    "frcn": ("proximity", "linear"),
}
NAMES = sorted(SMALL)


def small(name: str):
    return create_model(name, base=SMALL[name])


def randomise_batchnorm(model, seed: int = 0) -> None:
    """Running statistics and affine parameters away from (0, 1), so that folding them
    into the convolutions changes the weights for real."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)


def test_registry_lists_the_baselines_with_their_target_and_output():
    assert set(NAMES) <= set(list_models())
    for name, (kind, activation) in KINDS.items():
        net = small(name)
        assert (net.target_kind, net.output_activation) == (kind, activation)
        assert net.aligned_inputs is False
    micronet = create_model("micronet_tiny")
    assert (micronet.target_kind, micronet.output_activation) == ("proximity", "linear")


@pytest.mark.parametrize("size", [(64, 64), (75, 61), (33, 47)])
@pytest.mark.parametrize("name", NAMES)
def test_output_has_the_input_size(name, size):
    net = small(name).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_config_dict_rebuilds_the_same_architecture(name):
    net = small(name)
    config = net.config_dict()
    assert config["name"] == name and config["base"] == SMALL[name]
    rebuilt = model_from_config(config)
    assert type(rebuilt) is type(net) and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), net.eval()(x))


def test_unknown_options_and_architectures_raise_listing_the_valid_ones():
    with pytest.raises(ValueError, match="unknown .*option.*widths.*valid: base, dropout, in_channels"):
        create_model("unet", widths=(8, 16, 32, 32))
    assert create_model("unet", base=4, dropout=None).config.dropout == 0.5  # None: the model's own
    with pytest.raises(ValueError, match="base"):
        create_model("fcrn_a", base=0)
    with pytest.raises(ValueError, match="dropout"):
        create_model("fcn", base=4, dropout=1.0)
    with pytest.raises(ValueError, match="not supported; valid: 'micronet', 'fcn', 'fcrn_a', 'fcrn_b', 'frcn', 'unet'"):
        model_from_config({"name": "segnet"})


@pytest.mark.parametrize("name", NAMES)
def test_blocks_hold_every_parameter_exactly_once(name):
    net = small(name)
    ids = [id(p) for blk in net.blocks() for m in blk for p in m.parameters()]
    assert len(ids) == len(set(ids)), "a parameter in two blocks"
    assert set(ids) == {id(p) for p in net.parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_one_sgd_step_with_the_models_own_loss_has_finite_gradients(name):
    torch.manual_seed(0)
    net = small(name).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2, 3, 64, 48)
    out = net(x)
    if net.target_kind == "disk":  # a pixel classifier: logits against a 0/1 disk map
        target = (torch.rand_like(out) > 0.8).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
    else:  # a regressor: density or proximity map
        target = torch.rand_like(out) * 5.0
        loss = torch.nn.functional.mse_loss(out, target)
    opt.zero_grad()
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname}: non-finite gradient"
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_map_output_applies_the_sigmoid_to_classifiers_only():
    y = torch.linspace(-3, 3, 7).view(1, 1, 1, 7)
    assert torch.allclose(map_output(small("unet"), y), torch.sigmoid(y))
    assert torch.allclose(map_output(small("fcn"), y), torch.sigmoid(y))
    for name in ("fcrn_a", "fcrn_b", "frcn", "micronet_tiny"):
        net = create_model(name, base=4) if name in SMALL else create_model(name)
        assert map_output(net, y) is y


@pytest.mark.parametrize("name", NAMES)
def test_count_flops_measures_every_baseline(name):
    net = small(name)
    flops = count_flops(net, 64, 48)
    assert flops > 0
    # A quarter of the image area, about a quarter of the cost (crops aside).
    assert count_flops(net, 32, 24) == pytest.approx(flops / 4, rel=0.25)


# Parameters at the paper's widths (one output channel): FCN-8s on VGG-16 with fc6/fc7 as
# convolutions ~134 M, U-Net ~31 M; FCRN-A/B from their layer lists; FRCN at our widths.
PAPER_PARAMETERS = {
    "fcn": (130e6, 138e6),
    "unet": (30e6, 32e6),
    "fcrn_a": (1.3e6, 1.45e6),
    "fcrn_b": (3.0e6, 3.3e6),
    "frcn": (1.5e6, 2.1e6),
}


@pytest.mark.parametrize("name", NAMES)
def test_paper_widths_are_the_default_and_give_the_papers_size(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        net = create_model(name)
    lo, hi = PAPER_PARAMETERS[name]
    count = sum(p.numel() for p in net.parameters())
    assert lo < count < hi, f"{name}: {count / 1e6:.2f} M parameters"


@pytest.fixture(scope="module")
def onnxruntime():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", NAMES)
def test_fp32_export_matches_torch_on_an_odd_sized_image(name, tmp_path, onnxruntime):
    from micronet.export.onnx import export_onnx
    from micronet.runtime.model_info import ModelInfo
    from micronet.trainer.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(1)
    model = small(name).eval()
    randomise_batchnorm(model)
    mean, std = [180.0, 130.0, 170.0], [40.0, 45.0, 35.0]
    info = ModelInfo(architecture=model.config_dict(), mean=mean, std=std, mpp=0.55, threshold=0.5)
    ckpt = save_checkpoint(tmp_path / f"{name}.safetensors", model, info)
    loaded, _ = load_checkpoint(ckpt)
    assert type(loaded) is type(model)
    out = export_onnx(ckpt, tmp_path / f"{name}.onnx")

    images = np.random.default_rng(3).integers(0, 256, (1, 75, 61, 3), dtype=np.uint8)  # (N, H, W, 3)
    sess = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": images})[0]  # (N, 1, H, W)
    x = (torch.from_numpy(images).float() - torch.tensor(mean)) / torch.tensor(std)
    with torch.no_grad():
        want = map_output(model, model(x.permute(0, 3, 1, 2))).numpy()  # probabilities for fcn/unet
    assert got.shape == want.shape == (1, 1, 75, 61)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=1e-4)
