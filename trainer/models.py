"""Networks: MicroNet (Xing et al. 2019) and its width variants, behind one registry.

``create_model(name, **overrides)`` builds a registered network; ``None`` overrides are
dropped so command-line defaults never mask a model's own defaults (as timm does). Each
variant is a few lines over a shared builder, and every model carries its config as
data (``model.config``) so checkpoints can rebuild it.

MicroNet block numbering (used by fine-tuning to freeze the first k blocks):

====== ===================================================================
block  part
====== ===================================================================
1      input transition (one 3×3 convolution)
2–5    downsampling path: residual blocks at 1, 1/2, 1/4, 1/8 resolution,
       a stride-2 convolution before blocks 3, 4, 5
6–9    upsampling path: residual blocks at 1/8, 1/4, 1/2, 1 resolution,
       a transposed convolution (and concatenation) before blocks 7, 8, 9
10     multi-context aggregation and the output transition (two convolutions)
====== ===================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from micronet.runtime.errors import InputError

__all__ = [
    "ACTIVATIONS",
    "MicroNet",
    "MicroNetConfig",
    "create_model",
    "list_models",
    "map_output",
    "model_from_config",
    "register_model",
    "with_activation",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Registers a model factory under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """The names ``create_model`` accepts."""
    return sorted(_REGISTRY)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Builds a registered model; ``None``-valued overrides are ignored.

    >>> create_model("micronet_lean").config.widths
    (16, 32, 64, 64)
    """
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    return _REGISTRY[name](**kwargs)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuilds a model from the ``{"name": ..., **config}`` dict a checkpoint stores:
    MicroNet (``"micronet"``) or a baseline (``"fcn"``, ``"unet"``, ...; see
    :mod:`micronet.trainer.baselines`)."""
    from .baselines import BASELINES  # loaded by the import at the end of this module

    config = dict(config)
    name = config.pop("name", None)
    if name in BASELINES:
        return BASELINES[name].from_config_dict(config)
    if name != "micronet":
        valid = ", ".join(repr(n) for n in ["micronet", *sorted(BASELINES)])
        raise InputError(f"checkpoint architecture {name!r} is not supported; valid: {valid}")
    if "widths" in config:
        config["widths"] = tuple(config["widths"])
    for key in ("context_depths", "classes"):
        if key in config:
            config[key] = tuple(config[key])
    return MicroNet(MicroNetConfig(**config))


def map_output(model: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The map a model's raw output stands for: probabilities (``sigmoid``) for pixel
    classifiers that return logits (``output_activation == "sigmoid"``: FCN, U-Net),
    the output itself for regressors (MicroNet, FCRN, FRCN)."""
    if getattr(model, "output_activation", "linear") == "sigmoid":
        return torch.sigmoid(y)
    return y


@dataclass(frozen=True)
class MicroNetConfig:
    """Architecture of a MicroNet.

    widths: channels of the four downsampling residual blocks (full, 1/2, 1/4, 1/8
        resolution); the paper doubles the width when the map halves, except at the
        last block. The upsampling blocks mirror them.
    context_channels: channels each multi-context branch contributes at full resolution.
    context_depths: which downsampling blocks (1-based, 2..4) feed the multi-context
        aggregation through transposed convolutions.
    dropout: after the convolutions of the last two downsampling blocks.
    in_channels: 3 for RGB.
    classes: nucleus phenotype names; when given, a class head (two 1×1 convolutions
        on the aggregated features of block 10, about 1 % of the FLOPs) gives one logit
        per class and pixel, read at each detected peak. Empty: detection only.
    class_context: channels of the class head's deep context (0: none). When > 0, the
        head also reads the decoder's 1/8- and 1/4-resolution maps (blocks 6 and 7), each
        through a 3×3 convolution at its own resolution and a transposed convolution to
        full resolution (``class_context`` channels each): a phenotype depends on tissue
        context that block 10's input carries thinly (docs/results.md measures it).
        About 4 % of the FLOPs at 16 channels on the wide network, 8 on the lean one.
    class_scale: where the class head runs: 1, at full resolution (as above); or 4, at
        the decoder's 1/4 resolution: it reads block 7's map, the 1/8 map of block 6
        (3×3 convolution, then a transposed convolution to 1/4, ``class_context``
        channels), and block 10's input averaged over 4×4 cells; a 3×3 convolution and a
        1×1 one give the logits at 1/4, which a bilinear resize brings to full
        resolution. About 2 % of the FLOPs, and only the K logits are full-resolution
        maps, so the tile a memory budget allows hardly shrinks (docs/results.md).
    class_depth: with ``class_scale`` 4, residual blocks (two 3×3 convolutions of
        ``widths[0]`` channels each) between the head's 3×3 convolution and its 1×1 one:
        more tissue context for the phenotype (each block reads 8 px farther) at about
        0.6 % of the wide network's FLOPs per block.
    activation: ``"elu"``, the paper's (the default), or ``"relu"``. ONNX Runtime's CPU
        provider fuses ReLU into its blocked (NCHWc) convolutions and quantises it away
        in int8; ELU runs as a separate pass with layout changes around it (see
        docs/benchmarks.md for what that costs).
    """

    widths: tuple[int, int, int, int] = (16, 32, 64, 64)
    context_channels: int = 8
    context_depths: tuple[int, ...] = (2, 3, 4)
    dropout: float = 0.5
    in_channels: int = 3
    activation: str = "elu"
    classes: tuple[str, ...] = ()
    class_context: int = 0
    class_scale: int = 1
    class_depth: int = 0

    def __post_init__(self) -> None:
        if len(self.widths) != 4 or any(int(w) < 1 for w in self.widths):
            raise InputError(f"widths: expected four positive channel counts, got {self.widths}")
        if not set(self.context_depths) <= {2, 3, 4}:
            raise InputError(f"context_depths: expected values among 2, 3, 4, got {self.context_depths}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation: expected one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if len(set(self.classes)) != len(self.classes) or any(not str(c) for c in self.classes):
            raise InputError(f"classes: expected distinct non-empty names, got {list(self.classes)}")
        if int(self.class_context) < 0 or (self.class_context and not self.classes):
            raise InputError(f"class_context: expected 0, or a positive channel count with classes, got {self.class_context}")
        if self.class_scale not in (1, 4) or (self.class_scale == 4 and not self.class_context):
            raise InputError(f"class_scale: expected 1, or 4 with a class_context, got {self.class_scale}")
        if int(self.class_depth) < 0 or (self.class_depth and self.class_scale != 4):
            raise InputError(f"class_depth: expected 0, or a block count with class_scale 4, got {self.class_depth}")


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"elu": nn.ELU, "relu": nn.ReLU}


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions, each followed by batch norm; the activation (ELU in the
    paper) after the first batch norm and after the residual addition; optional dropout
    after the convolutions."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, act: Callable[[], nn.Module] = nn.ELU) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout)
        self.act1 = act()
        self.conv2 = _conv_bn(cout, cout)
        self.skip = nn.Identity() if cin == cout else _conv_bn(cin, cout, kernel=1)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.act2 = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.drop(self.conv2(y))
        return self.act2(y + self.skip(x))


def _fit(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Crops (or zero-pads) x to the spatial size of the map it joins.

    MicroNet's stride-2 convolutions halve with rounding up (75 → 38 → 19 → 10), so an
    upsampled map is never smaller than its target and only the crop ever acts; the pad
    keeps the function right for any other size (75 → 37 designs pad 74 → 75).
    """
    exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    if exporting:
        # Traced for ONNX: one crop that stays valid at every input size (a shortcut on
        # equal sizes would freeze the traced case). No pad: by the rounding above it is
        # always empty, and ONNX Runtime would run it as a copy.
        return x[..., : size[0], : size[1]]
    if x.shape[-2] == size[0] and x.shape[-1] == size[1]:
        return x
    x = x[..., : size[0], : size[1]]
    return F.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2]))


def pool_cells(x: torch.Tensor, weight: torch.Tensor, aligned: bool = False) -> torch.Tensor:
    """The mean of each whole ``cell × cell`` block of ``x``, as a depthwise convolution
    with the fixed ``weight`` ``(C, 1, cell, cell)`` of ``1 / cell²`` (in an int8 graph a
    quantised convolution that reads the u8 map as it is; ONNX Runtime's quantised
    AveragePool makes a float copy of its whole input). Unless ``aligned`` (sides
    multiples of ``cell``), one more row and column repeat the last ones, so the result
    covers ``ceil(H / cell) × ceil(W / cell)`` (a partial block reads its whole
    neighbour); the caller cuts it to the map it joins."""
    y = F.conv2d(x, weight, stride=weight.shape[-1], groups=weight.shape[0])
    if aligned:
        return y
    y = torch.cat([y, y[..., -1:, :]], dim=2)  # as a replicate pad, in ONNX two Slices and Concats
    return torch.cat([y, y[..., -1:]], dim=3)


class MicroNet(nn.Module):
    """MicroNet: a U-Net-like FCN with residual blocks and multi-context aggregation that
    regresses the proximity map (Eq. 1). Input ``(B, 3, H, W)`` normalised float, any H, W;
    output ``(B, 1, H, W)``, linear (no sigmoid): targets are in [0, scale]."""

    target_kind = "proximity"  # what it regresses (trainer/targets.py)
    output_activation = "linear"  # see map_output

    def __init__(self, config: MicroNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or MicroNetConfig()
        w = self.config.widths
        drop = self.config.dropout
        act = ACTIVATIONS[self.config.activation]
        # Set by the ONNX export's aligned branch: inputs whose sides are multiples of 8
        # need no crop where maps join (see _fit), so none is traced. Not a config value:
        # it changes the traced graph, never the function on such inputs.
        self.aligned_inputs = False
        # Block 1: input transition.
        self.block1 = nn.Sequential(_conv_bn(self.config.in_channels, w[0]), act())
        # Blocks 2-5: downsampling path; stride-2 convolutions between consecutive blocks.
        self.block2 = ResidualBlock(w[0], w[0], act=act)
        self.down2 = nn.Sequential(_conv_bn(w[0], w[1], stride=2), act())
        self.block3 = ResidualBlock(w[1], w[1], act=act)
        self.down3 = nn.Sequential(_conv_bn(w[1], w[2], stride=2), act())
        self.block4 = ResidualBlock(w[2], w[2], dropout=drop, act=act)
        self.down4 = nn.Sequential(_conv_bn(w[2], w[3], stride=2), act())
        self.block5 = ResidualBlock(w[3], w[3], dropout=drop, act=act)
        # Blocks 6-9: upsampling path; transposed convolutions, then concatenation with
        # the downsampled output of the same resolution.
        self.block6 = ResidualBlock(w[3], w[3], act=act)
        self.up7 = self._up(w[3], w[2], act)
        self.block7 = ResidualBlock(2 * w[2], w[2], act=act)
        self.up8 = self._up(w[2], w[1], act)
        self.block8 = ResidualBlock(2 * w[1], w[1], act=act)
        self.up9 = self._up(w[1], w[0], act)
        self.block9 = ResidualBlock(2 * w[0], w[0], act=act)
        # Block 10: multi-context aggregation (transposed convolutions from several
        # depths straight to full resolution) and the output transition.
        c = self.config.context_channels
        depth_width = {2: w[1], 3: w[2], 4: w[3]}
        self.context = nn.ModuleDict(
            {
                str(d): nn.Sequential(
                    nn.ConvTranspose2d(depth_width[d], c, kernel_size=2 ** (d - 1), stride=2 ** (d - 1), bias=False),
                    nn.BatchNorm2d(c),
                    act(),
                )
                for d in self.config.context_depths
            }
        )
        agg = w[0] + c * len(self.config.context_depths)
        self.block10 = nn.Sequential(_conv_bn(agg, w[0]), act(), nn.Conv2d(w[0], 1, kernel_size=1))
        self._build_class_head(w, agg, act)

    def _build_class_head(self, w: tuple[int, ...], agg: int, act: Callable[[], nn.Module]) -> None:
        """``class_context`` and ``class_head`` (None without classes), at the configured scale."""
        # The class head reads the same aggregated features as the proximity head: the
        # multi-context branches carry the tissue context a phenotype depends on.
        k = len(self.config.classes)
        cc = int(self.config.class_context) if k else 0
        if k and self.config.class_scale == 4:
            # At 1/4: block 7's map, block 6's brought to 1/4, block 10's input pooled.
            self.class_context = nn.ModuleDict({"6": self._class_context(w[3], cc, 2, act)})
            blocks = [ResidualBlock(w[0], w[0], act=act) for _ in range(int(self.config.class_depth))]
            self.class_head = nn.Sequential(_conv_bn(w[2] + cc + agg, w[0]), act(), *blocks, nn.Conv2d(w[0], k, kernel_size=1))
            # Block 10's input averaged over 4×4 cells (pool_cells); fixed, not stored.
            self.register_buffer("class_pool", torch.full((agg, 1, 4, 4), 1.0 / 16), persistent=False)
            return
        # The class head's deep context: decoder maps at 1/8 (block 6) and 1/4 (block 7).
        self.class_context = (
            nn.ModuleDict({"6": self._class_context(w[3], cc, 8, act), "7": self._class_context(w[2], cc, 4, act)}) if cc else None
        )
        self.class_head = (
            nn.Sequential(_conv_bn(agg + 2 * cc, w[0], kernel=1), act(), nn.Conv2d(w[0], k, kernel_size=1)) if k else None
        )

    @staticmethod
    def _class_context(cin: int, cout: int, scale: int, act: Callable[[], nn.Module]) -> nn.Sequential:
        """A 3×3 convolution at the map's resolution (2·cout channels), then a transposed
        convolution (kernel = stride = ``scale``, with bias) straight to full resolution."""
        return nn.Sequential(_conv_bn(cin, 2 * cout), act(), nn.ConvTranspose2d(2 * cout, cout, kernel_size=scale, stride=scale), act())

    @staticmethod
    def _up(cin: int, cout: int, act: Callable[[], nn.Module]) -> nn.Sequential:
        return nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2, bias=False), nn.BatchNorm2d(cout), act())

    def blocks(self) -> list[list[nn.Module]]:
        """The modules of blocks 1..10 (index 0 is block 1), for freezing the first k."""
        return [
            [self.block1],
            [self.block2],
            [self.down2, self.block3],
            [self.down3, self.block4],
            [self.down4, self.block5],
            [self.block6],
            [self.up7, self.block7],
            [self.up8, self.block8],
            [self.up9, self.block9],
            [self.context, self.block10]
            + [m for m in (self.class_context, self.class_head) if m is not None],
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The proximity map ``(B, 1, H, W)`` (the class head, if any, is not run)."""
        return self.block10(self._aggregate(x))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(proximity map (B, 1, H, W), class logits (B, K, H, W) or None)``."""
        agg, decoder = self._features(x)
        if self.class_head is None:
            return self.block10(agg), None
        # Sizes from the input, not from agg: in an int8 graph agg's shape would be read
        # off a float copy of it (a DequantizeLinear feeding Shape: 160 B per pixel).
        size = x.shape[-2:]
        if self.config.class_scale == 4:
            low = self.class_head(self.class_input(self.pool_cells(agg), decoder))
            return self.block10(agg), self.upsample_logits(low, size)
        return self.block10(agg), self.class_head(self.class_input(agg, decoder, size))

    def pool_cells(self, agg: torch.Tensor) -> torch.Tensor:
        """Block 10's input averaged over 4×4 cells (:func:`pool_cells`), for ``class_scale`` 4."""
        return pool_cells(agg, self.class_pool, self.aligned_inputs)

    def upsample_logits(self, low: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
        """The 1/4-resolution logits resized ×4 (bilinear, pixel centres aligned with the
        4×4 cells they were pooled from), cut to ``size``."""
        return self._join(F.interpolate(low, scale_factor=4.0, mode="bilinear", align_corners=False), size)

    def class_input(self, agg: torch.Tensor, decoder: dict[str, torch.Tensor], size: torch.Size | tuple[int, int] | None = None) -> torch.Tensor:
        """The class head's input: block 10's, and the deep context when configured (cut
        to ``size``, the input's, by default agg's). With ``class_scale`` 4, ``agg`` is
        block 10's input pooled (:func:`pool_cells`), and the input is at 1/4 resolution."""
        if self.config.class_scale == 4:
            u7 = decoder["7"]
            return torch.cat([u7, self._join(self.class_context["6"](decoder["6"]), u7.shape[-2:]), self._join(agg, u7.shape[-2:])], dim=1)
        if self.class_context is None:
            return agg
        ctx = [self._join(self.class_context[d](decoder[d]), agg.shape[-2:] if size is None else size) for d in ("6", "7")]
        return torch.cat([agg, *ctx], dim=1)

    def _join(self, x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
        """``x`` cut to the map it joins (:func:`_fit`); as it is for aligned inputs."""
        return x if self.aligned_inputs else _fit(x, size)

    def _aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """Block 10's input: full-resolution features and the multi-context branches."""
        return self._features(x)[0]

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Block 10's input, and the decoder's maps of blocks 6 (1/8) and 7 (1/4) by name."""
        size = x.shape[-2:]
        d1 = self.block2(self.block1(x))  # (B, w0, H, W)
        d2 = self.block3(self.down2(d1))  # (B, w1, H/2, W/2)
        d3 = self.block4(self.down3(d2))  # (B, w2, H/4, W/4)
        d4 = self.block5(self.down4(d3))  # (B, w3, H/8, W/8)
        u6 = self.block6(d4)
        fit = self._join
        u7 = self.block7(torch.cat([d3, fit(self.up7(u6), d3.shape[-2:])], dim=1))  # (B, w2, H/4, W/4)
        u = self.block8(torch.cat([d2, fit(self.up8(u7), d2.shape[-2:])], dim=1))  # (B, w1, H/2, W/2)
        u = self.block9(torch.cat([d1, fit(self.up9(u), d1.shape[-2:])], dim=1))  # (B, w0, H, W)
        depth_out = {2: d2, 3: d3, 4: d4}
        ctx = [fit(self.context[str(d)](depth_out[d]), size) for d in self.config.context_depths]
        return torch.cat([u, *ctx], dim=1), {"6": u6, "7": u7}  # (B, w0 + c·len(context_depths), H, W)

    def config_dict(self) -> dict[str, Any]:
        """``{"name": "micronet", **config}``, JSON-able, as checkpoints store it."""
        d = asdict(self.config)
        d["widths"] = list(d["widths"])
        d["context_depths"] = list(d["context_depths"])
        d["classes"] = list(d["classes"])
        if not d["class_depth"]:
            del d["class_depth"]  # as checkpoints and exports before it was a field
        return {"name": "micronet", **d}


def with_activation(model: MicroNet, activation: str) -> MicroNet:
    """A copy of ``model`` with another activation and the same weights: the start of an
    activation-swap fine-tune (activations have no parameters, so every weight carries
    over)."""
    config = replace(model.config, activation=activation)
    swapped = MicroNet(config)
    swapped.load_state_dict(model.state_dict())
    return swapped.train(model.training)


def _micronet(defaults: dict[str, Any], overrides: dict[str, Any]) -> MicroNet:
    """A MicroNet from a variant's defaults, updated by the caller's overrides."""
    merged = {**defaults, **overrides}
    merged["widths"] = tuple(merged["widths"])
    for key in ("context_depths", "classes"):
        if key in merged:
            merged[key] = tuple(merged[key])
    return MicroNet(MicroNetConfig(**merged))


@register_model
def micronet(**kwargs: Any) -> MicroNet:
    """The default: lean widths 16-32-64-64 (see docs/architecture.md for the trade-off)."""
    return _micronet({"widths": (16, 32, 64, 64)}, kwargs)


@register_model
def micronet_lean(**kwargs: Any) -> MicroNet:
    """Widths 16-32-64-64 (the default)."""
    return _micronet({"widths": (16, 32, 64, 64)}, kwargs)


@register_model
def micronet_tiny(**kwargs: Any) -> MicroNet:
    """Widths 8-16-32-32: for unit tests and the smallest edge devices."""
    return _micronet({"widths": (8, 16, 32, 32), "context_channels": 4}, kwargs)


@register_model
def micronet_wide(**kwargs: Any) -> MicroNet:
    """Widths 32-64-128-128: the paper-scale width."""
    return _micronet({"widths": (32, 64, 128, 128), "context_channels": 16}, kwargs)


def count_flops(model: nn.Module, height: int = 500, width: int = 500) -> float:
    """Forward multiply-adds ×2 (FLOPs) for one ``height × width`` image, measured by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width))
    model.train(was_training)
    return float(counter.get_total_flops())


# The baselines of the seed paper's Table 1 join the registry: fcn, unet, fcrn_a, fcrn_b,
# frcn. baselines.py imports nothing from this module (no import cycle).
from . import baselines

for _factory in baselines.FACTORIES:
    register_model(_factory)
