"""What the baselines of :mod:`trainer.baselines` share: their configs (one width
knob, ``base``), the conv → batch norm → ReLU units, pooling and upsampling that keep any
input size, and the common module (:class:`_Baseline`: its output, its config record)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from micronet.runtime.errors import InputError

from .options import check_names


@dataclass(frozen=True)
class _BaselineConfig:
    """What every baseline's config has: a width, a dropout rate and input channels,
    checked on construction; each model sets its name and its paper's defaults."""

    model: ClassVar[str] = "baseline"
    base: int = 64
    dropout: float = 0.0
    in_channels: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.base, bool) or not isinstance(self.base, int) or self.base < 1:
            raise InputError(f"{self.model}: base: expected a positive channel count, got {self.base!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"{self.model}: dropout: expected a probability in [0, 1), got {self.dropout}")
        if self.in_channels < 1:
            raise InputError(f"{self.model}: in_channels: expected a positive count, got {self.in_channels}")


@dataclass(frozen=True)
class FCNConfig(_BaselineConfig):
    """FCN-8s on VGG-16.

    base: channels of the first VGG stage (64 in the paper); the five stages have
        base·(1, 2, 4, 8, 8), fc6 and fc7 base·64 (4096).
    dropout: after fc6 and after fc7 (0.5, as VGG-16 and FCN).
    in_channels: 3 for RGB.
    """

    model: ClassVar[str] = "fcn"
    base: int = 64
    dropout: float = 0.5


@dataclass(frozen=True)
class UNetConfig(_BaselineConfig):
    """U-Net.

    base: channels of the first level (64 in the paper); the five levels have
        base·(1, 2, 4, 8, 16).
    dropout: after the deepest level, the end of the contracting path (0.5).
    in_channels: 3 for RGB.
    """

    model: ClassVar[str] = "unet"
    base: int = 64
    dropout: float = 0.5


@dataclass(frozen=True)
class FCRNAConfig(_BaselineConfig):
    """FCRN-A.

    base: channels of the first convolution (32 in the paper); the network has
        base·(1, 2, 4), base·16 (the 512-channel "fully connected" layer), base·(4, 2, 1).
    dropout: after the fully connected layer; 0 (the paper has none).
    in_channels: 3 for RGB.
    """

    model: ClassVar[str] = "fcrn_a"
    base: int = 32
    dropout: float = 0.0


@dataclass(frozen=True)
class FCRNBConfig(_BaselineConfig):
    """FCRN-B.

    base: channels of the first convolution (32 in the paper); the network has
        base·(1, 2, 4, 8), base·8 (the "fully connected" layer), base·8.
    dropout: after the fully connected layer; 0 (the paper has none).
    in_channels: 3 for RGB.
    """

    model: ClassVar[str] = "fcrn_b"
    base: int = 32
    dropout: float = 0.0


@dataclass(frozen=True)
class FRCNConfig(_BaselineConfig):
    """FRCN.

    base: channels at full resolution; the four levels have base·(1, 2, 4, 8).
    dropout: in the deepest residual block; 0.
    in_channels: 3 for RGB.
    """

    model: ClassVar[str] = "frcn"
    base: int = 32
    dropout: float = 0.0


def _conv_bn(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    # A pair in an nn.Sequential: what the exporter's batch-norm folding looks for.
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout))


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(_conv_bn(cin, cout, kernel), nn.ReLU())


def _pool() -> nn.MaxPool2d:
    # Rounds up (75 → 38): a ×2 upsampling of the result covers the map before the pool.
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """x cut to the spatial size of ``like`` from the top-left. Never a pad: pools round
    up, so x is never smaller. A slice by the other tensor's shape stays dynamic under
    ONNX tracing and is a view (no copy) in eager mode when the sizes already agree."""
    return x[..., : like.shape[-2], : like.shape[-1]]


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    # Half-pixel bilinear ×2: the grid of a 2×2 pool, undone.
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def _bilinear_(deconv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Sets a (C→C or 1→1) transposed convolution of kernel 2f, stride f, padding f/2 to
    bilinear interpolation, as FCN initialises its upsampling layers."""
    k = deconv.kernel_size[0]
    factor = (k + 1) // 2
    center = factor - 0.5 if k % 2 == 0 else factor - 1.0
    og = torch.arange(k, dtype=torch.float32)
    filt1d = 1.0 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]  # (k, k)
    with torch.no_grad():
        deconv.weight.zero_()
        for c in range(min(deconv.in_channels, deconv.out_channels)):
            deconv.weight[c, c] = filt
    return deconv


class _ResidualBlock(nn.Module):
    """He et al.'s basic block (two 3×3 convolutions with batch norm, ReLU after the
    first and after the addition; identity shortcut, or 1×1 convolution + batch norm when
    the width changes), with optional dropout after the convolutions."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cout)
        self.conv2 = _conv_bn(cout, cout)
        self.skip = nn.Identity() if cin == cout else _conv_bn(cin, cout, kernel=1)
        self.drop = _dropout(dropout)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.conv2(self.conv1(x))) + self.skip(x))


class _Baseline(nn.Module):
    """What every baseline shares: its config as data, the registry name checkpoints
    store, and what its output means."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    target_kind: ClassVar[str]
    output_activation: ClassVar[str]

    def __init__(self, config: Any = None) -> None:
        super().__init__()
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise InputError(f"{self.name}: expected a {self.config_class.__name__}, got {type(self.config).__name__}")
        # Set by the exporter's aligned branch on every model; these networks crop the
        # same way at every size, so they read it nowhere.
        self.aligned_inputs = False

    @classmethod
    def from_config_dict(cls, options: dict[str, Any]) -> _Baseline:
        """Builds the network from config fields (a checkpoint's dict without "name", or
        ``create_model`` overrides); unknown fields raise, listing the valid ones."""
        check_names(options, (f.name for f in fields(cls.config_class)), cls.name)
        return cls(cls.config_class(**options))

    def config_dict(self) -> dict[str, Any]:
        """``{"name": <registry name>, **config}``, JSON-able, as checkpoints store it."""
        return {"name": self.name, **asdict(self.config)}

    def blocks(self) -> list[list[nn.Module]]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError
