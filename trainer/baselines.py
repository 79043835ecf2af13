"""The baselines of the seed paper's Table 1 (Xing et al. 2019), behind the model registry.

========= ===================================== ========= ====== ==================
name      paper                                 target    output default widths
========= ===================================== ========= ====== ==================
fcn       FCN-8s, Long et al. 2015 (VGG-16)     disk      logits base 64 (fc 4096)
unet      U-Net, Ronneberger et al. 2015        disk      logits base 64 (… 1024)
fcrn_a    FCRN-A, Xie, Noble, Zisserman 2016    density   linear base 32 (fc 512)
fcrn_b    FCRN-B, Xie, Noble, Zisserman 2016    density   linear base 32 (… 256)
frcn      FRCN, Xie et al. 2018 (MedIA)         proximity linear base 32 (… 256)
========= ===================================== ========= ====== ==================

Each network keeps its paper's topology (layer counts, kernel sizes, pooling and
upsampling, skip structure) with its widths scaled by one number, ``base`` (the paper's
by default), so an equal-budget study can run it narrower. What every one changes, and
why:

- Batch norm after every hidden convolution (convolution without bias → BatchNorm2d →
  ReLU), which FCN, U-Net and FCRN do not have: one optimiser and one learning rate then
  fit every model of the study, as they fit MicroNet. The pairs sit in
  ``nn.Sequential`` so the exporter folds them (:func:`micronet.export.onnx.fold_batchnorm`).
- Any input size: ``(B, 3, H, W)`` in, ``(B, 1, H, W)`` out. Max pools round up
  (``ceil_mode``), so an upsampled map is never smaller than the map it joins, and is
  cropped to it by slicing from the top-left (a crop that ONNX tracing keeps dynamic).
  Convolutions are 'same'-padded; the originals' valid convolutions (U-Net) and 100-pixel
  input padding (FCN) would change the output size.
- One output channel: a logit for the pixel classifiers (nucleus disk against
  background; the trainer and the exporter apply the sigmoid, :func:`map_output`), the
  map itself for the regressors.

``aligned_inputs`` exists because the exporter sets it on every model; these networks
ignore it (their crops are exported in both branches).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


from .baseline_parts import (  # noqa: F401  the configs are this module's public names too
    _BaselineConfig,
    FCNConfig,
    UNetConfig,
    FCRNAConfig,
    FCRNBConfig,
    FRCNConfig,
    _conv_bn,
    _conv_bn_relu,
    _pool,
    _dropout,
    _crop,
    _upsample2,
    _bilinear_,
    _ResidualBlock,
    _Baseline,
)

__all__ = [
    "BASELINES",
    "FACTORIES",
    "FCN",
    "FCRNA",
    "FCRNB",
    "FRCN",
    "FCNConfig",
    "FCRNAConfig",
    "FCRNBConfig",
    "FRCNConfig",
    "UNet",
    "UNetConfig",
]


class FCN(_Baseline):
    """FCN-8s: Long, Shelhamer and Darrell, "Fully convolutional networks for semantic
    segmentation", CVPR 2015, on the VGG-16 layout (Simonyan and Zisserman 2015).

    Taken from the paper: the five VGG-16 stages (2, 2, 3, 3, 3 convolutions of 3×3,
    widths 64-128-256-512-512, each stage closed by a 2×2 max pool), fc6 and fc7 as
    convolutions (7×7 and 1×1, 4096 channels, dropout 0.5 after each), a 1×1 class score
    on fc7 (``score_fr``), the "8s" skip net: the score upsampled ×2 by a transposed
    convolution (kernel 4, stride 2) and added to a 1×1 score of pool4, that sum
    upsampled ×2 and added to a 1×1 score of pool3, and the result upsampled ×8
    (kernel 16, stride 8) to the input's resolution. Upsampling filters start as bilinear
    interpolation, as in the paper.

    Changed: batch norm after every hidden convolution (see the module docstring); 'same'
    padding instead of the paper's 100-pixel input padding and its crop offsets; all three
    upsamplings learnt (the reference FCN-8s keeps the final ×8 one fixed to bilinear); no
    ImageNet initialisation (the paper fine-tunes from VGG-16 weights, which an
    equal-budget study gives no other model). One output channel, the logit of "nucleus disk" (the paper
    has one per class and a softmax): a pixel classifier, trained on a disk target with
    binary cross-entropy; ``forward`` returns logits.
    """

    name = "fcn"
    config_class = FCNConfig
    target_kind = "disk"
    output_activation = "sigmoid"

    def __init__(self, config: FCNConfig | None = None) -> None:
        super().__init__(config)
        b, cin, drop = self.config.base, self.config.in_channels, self.config.dropout
        widths, depths = (b, 2 * b, 4 * b, 8 * b, 8 * b), (2, 2, 3, 3, 3)
        stages: list[nn.Sequential] = []
        for width, depth in zip(widths, depths):
            layers = [_conv_bn_relu(cin if k == 0 else width, width) for k in range(depth)]
            stages.append(nn.Sequential(*layers, _pool()))
            cin = width
        self.stage1, self.stage2, self.stage3, self.stage4, self.stage5 = stages
        fc = 64 * b  # 4096 at the paper's width
        self.fc6 = nn.Sequential(_conv_bn(8 * b, fc, kernel=7), nn.ReLU(), _dropout(drop))
        self.fc7 = nn.Sequential(_conv_bn(fc, fc, kernel=1), nn.ReLU(), _dropout(drop))
        self.score_fr = nn.Conv2d(fc, 1, kernel_size=1)
        self.score_pool4 = nn.Conv2d(8 * b, 1, kernel_size=1)
        self.score_pool3 = nn.Conv2d(4 * b, 1, kernel_size=1)
        self.upscore2 = _bilinear_(nn.ConvTranspose2d(1, 1, kernel_size=4, stride=2, padding=1, bias=False))
        self.upscore_pool4 = _bilinear_(nn.ConvTranspose2d(1, 1, kernel_size=4, stride=2, padding=1, bias=False))
        self.upscore8 = _bilinear_(nn.ConvTranspose2d(1, 1, kernel_size=16, stride=8, padding=4, bias=False))

    def blocks(self) -> list[list[nn.Module]]:
        """Stages 1-5, fc6+fc7, the score and upsampling layers (input → output)."""
        return [
            [self.stage1],
            [self.stage2],
            [self.stage3],
            [self.stage4],
            [self.stage5],
            [self.fc6, self.fc7],
            [self.score_fr, self.upscore2, self.score_pool4, self.upscore_pool4, self.score_pool3, self.upscore8],
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.stage3(self.stage2(self.stage1(x)))  # (B, 4b, H/8, W/8), rounded up
        pool4 = self.stage4(pool3)  # (B, 8b, H/16, W/16)
        pool5 = self.stage5(pool4)  # (B, 8b, H/32, W/32)
        score = self.score_fr(self.fc7(self.fc6(pool5)))  # (B, 1, H/32, W/32)
        score = _crop(self.upscore2(score), pool4) + self.score_pool4(pool4)  # (B, 1, H/16, W/16)
        score = _crop(self.upscore_pool4(score), pool3) + self.score_pool3(pool3)  # (B, 1, H/8, W/8)
        return _crop(self.upscore8(score), x)  # (B, 1, H, W) logits


class UNet(_Baseline):
    """U-Net: Ronneberger, Fischer and Brox, "U-Net: convolutional networks for
    biomedical image segmentation", MICCAI 2015.

    Taken from the paper: a contracting path of four levels, each two 3×3 convolutions
    with ReLU and a 2×2 max pool, 64-128-256-512 channels, then two 3×3 convolutions of
    1024 at the bottom; an expansive path of four levels, each a 2×2 up-convolution that
    halves the channels, concatenation with the contracting path's map of that level,
    and two 3×3 convolutions; a final 1×1 convolution; dropout at the end of the
    contracting path (here after the bottom level, p = 0.5).

    Changed: 'same' padding. The paper's valid (unpadded) convolutions shrink the output
    (572 → 388) and need crops of the skips; padded ones give an output of the input's
    size, which the detector's tiling needs. Batch norm after every convolution,
    the up-convolutions included (see the module docstring). One output channel, the
    logit of "nucleus disk" (the paper: two classes and a softmax): a pixel classifier,
    trained on a disk target with binary cross-entropy; ``forward`` returns logits.
    """

    name = "unet"
    config_class = UNetConfig
    target_kind = "disk"
    output_activation = "sigmoid"

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__(config)
        b, cin = self.config.base, self.config.in_channels
        w = (b, 2 * b, 4 * b, 8 * b, 16 * b)

        def double(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(_conv_bn_relu(c_in, c_out), _conv_bn_relu(c_out, c_out))

        def up(c_in: int) -> nn.Sequential:  # 2×2 up-convolution halving the channels
            return nn.Sequential(nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2, bias=False), nn.BatchNorm2d(c_in // 2), nn.ReLU())

        self.pool = _pool()
        self.enc1, self.enc2, self.enc3, self.enc4 = double(cin, w[0]), double(w[0], w[1]), double(w[1], w[2]), double(w[2], w[3])
        self.bottom = nn.Sequential(double(w[3], w[4]), _dropout(self.config.dropout))
        self.up4, self.dec4 = up(w[4]), double(w[4], w[3])
        self.up3, self.dec3 = up(w[3]), double(w[3], w[2])
        self.up2, self.dec2 = up(w[2]), double(w[2], w[1])
        self.up1, self.dec1 = up(w[1]), double(w[1], w[0])
        self.head = nn.Conv2d(w[0], 1, kernel_size=1)

    def blocks(self) -> list[list[nn.Module]]:
        """Contracting levels 1-4, the bottom, expansive levels 4-1 (the last with the head)."""
        return [
            [self.enc1],
            [self.enc2],
            [self.enc3],
            [self.enc4],
            [self.bottom],
            [self.up4, self.dec4],
            [self.up3, self.dec3],
            [self.up2, self.dec2],
            [self.up1, self.dec1, self.head],
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # (B, b, H, W)
        e2 = self.enc2(self.pool(e1))  # (B, 2b, H/2, W/2), rounded up
        e3 = self.enc3(self.pool(e2))  # (B, 4b, H/4, W/4)
        e4 = self.enc4(self.pool(e3))  # (B, 8b, H/8, W/8)
        y = self.bottom(self.pool(e4))  # (B, 16b, H/16, W/16)
        y = self.dec4(torch.cat([e4, _crop(self.up4(y), e4)], dim=1))  # (B, 8b, H/8, W/8)
        y = self.dec3(torch.cat([e3, _crop(self.up3(y), e3)], dim=1))  # (B, 4b, H/4, W/4)
        y = self.dec2(torch.cat([e2, _crop(self.up2(y), e2)], dim=1))  # (B, 2b, H/2, W/2)
        y = self.dec1(torch.cat([e1, _crop(self.up1(y), e1)], dim=1))  # (B, b, H, W)
        return self.head(y)  # (B, 1, H, W) logits


class FCRNA(_Baseline):
    """FCRN-A: Xie, Noble and Zisserman, "Microscopy cell counting and detection with
    fully convolutional regression networks", Computer Methods in Biomechanics and
    Biomedical Engineering: Imaging & Visualization 6(3), 2018 (online 2016; first at the
    MICCAI 2015 Deep Learning workshop).

    Taken from the paper, as its first author's code (github.com/WeidiXie/cell_counting_v2,
    ``FCRN_A_base``) lays it out: 3×3 kernels throughout; three convolution + 2×2 max
    pool steps of 32, 64, 128 channels; a "fully connected" 3×3 convolution of 512 at 1/8
    resolution; three upsampling + 3×3 convolution steps of 128, 64, 32 channels back to
    full resolution; a 1×1 linear output that regresses the cell density map (a Gaussian
    per cell, scaled; trainer/targets.py). No skip connections.

    Changed: batch norm after every hidden convolution (the author's code adds it too, "to
    make it easier to train"). Upsampling is bilinear ×2; the author's Keras code uses
    ``UpSampling2D`` (nearest neighbour), and we could not read which the paper's figure
    states.
    """

    name = "fcrn_a"
    config_class = FCRNAConfig
    target_kind = "density"
    output_activation = "linear"

    def __init__(self, config: FCRNAConfig | None = None) -> None:
        super().__init__(config)
        b, cin = self.config.base, self.config.in_channels
        self.pool = _pool()
        self.conv1, self.conv2, self.conv3 = _conv_bn_relu(cin, b), _conv_bn_relu(b, 2 * b), _conv_bn_relu(2 * b, 4 * b)
        self.fc = nn.Sequential(_conv_bn_relu(4 * b, 16 * b), _dropout(self.config.dropout))
        self.up5, self.up6, self.up7 = _conv_bn_relu(16 * b, 4 * b), _conv_bn_relu(4 * b, 2 * b), _conv_bn_relu(2 * b, b)
        self.head = nn.Conv2d(b, 1, kernel_size=1)

    def blocks(self) -> list[list[nn.Module]]:
        """Each convolution, input → output (the last with the head)."""
        return [[self.conv1], [self.conv2], [self.conv3], [self.fc], [self.up5], [self.up6], [self.up7, self.head]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.conv1(x)  # (B, b, H, W)
        c2 = self.conv2(self.pool(c1))  # (B, 2b, H/2, W/2), rounded up
        c3 = self.conv3(self.pool(c2))  # (B, 4b, H/4, W/4)
        y = self.fc(self.pool(c3))  # (B, 16b, H/8, W/8)
        y = self.up5(_crop(_upsample2(y), c3))  # (B, 4b, H/4, W/4)
        y = self.up6(_crop(_upsample2(y), c2))  # (B, 2b, H/2, W/2)
        y = self.up7(_crop(_upsample2(y), c1))  # (B, b, H, W)
        return self.head(y)  # (B, 1, H, W) density


class FCRNB(_Baseline):
    """FCRN-B: Xie, Noble and Zisserman (the paper of :class:`FCRNA`).

    Taken from the paper: fewer pools (two, against FCRN-A's three) and larger kernels,
    built of "conv-conv-pool" steps: 3×3 convolutions of 32 and 64, a 2×2 max pool, a
    3×3 convolution of 128 and a 5×5 of 256, a 2×2 max pool, a "fully connected" 3×3
    convolution of 256 at 1/4 resolution; then upsampling + 5×5 convolution of 256,
    upsampling to full resolution and a 1×1 linear output that regresses the density
    map. No skip connections.

    We could not read the paper's figure itself; the layer list above is the one two
    independent re-implementations agree on in kernels, widths and the number of pools
    (Rubens et al., ULiège, "FCRN_B"; a Keras "FCRN_B" that places the first pool one
    convolution earlier). Changed: batch norm after every hidden convolution; bilinear
    ×2 upsampling (as :class:`FCRNA`).
    """

    name = "fcrn_b"
    config_class = FCRNBConfig
    target_kind = "density"
    output_activation = "linear"

    def __init__(self, config: FCRNBConfig | None = None) -> None:
        super().__init__(config)
        b, cin = self.config.base, self.config.in_channels
        self.pool = _pool()
        self.conv1, self.conv2 = _conv_bn_relu(cin, b), _conv_bn_relu(b, 2 * b)
        self.conv3, self.conv4 = _conv_bn_relu(2 * b, 4 * b), _conv_bn_relu(4 * b, 8 * b, kernel=5)
        self.fc = nn.Sequential(_conv_bn_relu(8 * b, 8 * b), _dropout(self.config.dropout))
        self.up6 = _conv_bn_relu(8 * b, 8 * b, kernel=5)
        self.head = nn.Conv2d(8 * b, 1, kernel_size=1)

    def blocks(self) -> list[list[nn.Module]]:
        """Each convolution, input → output."""
        return [[self.conv1], [self.conv2], [self.conv3], [self.conv4], [self.fc], [self.up6], [self.head]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c2 = self.conv2(self.conv1(x))  # (B, 2b, H, W)
        c4 = self.conv4(self.conv3(self.pool(c2)))  # (B, 8b, H/2, W/2), rounded up
        y = self.fc(self.pool(c4))  # (B, 8b, H/4, W/4)
        y = self.up6(_crop(_upsample2(y), c4))  # (B, 8b, H/2, W/2)
        return self.head(_crop(_upsample2(y), x))  # (B, 1, H, W) density


class FRCN(_Baseline):
    """FRCN: Xie, Xing, Shi, Kong, Su and Yang, "Efficient and robust cell detection: a
    structured regression approach", Medical Image Analysis 44, 2018.

    Taken from the paper (its abstract and the seed paper's description): a fully
    convolutional network that is residual throughout, trained as a structured
    regression of the proximity map (the seed paper's Eq. 1 follows it; the loss weights
    pixels near cells more, trainer/loss.py), with a linear output. Built here as:
    a 3×3 input convolution; residual blocks (two 3×3 convolutions and an identity or
    1×1 shortcut, with ReLU) at full,
    1/2, 1/4 and 1/8 resolution, 2×2 max pools between them; an upsampling path of
    2×2 transposed convolutions whose output is *added* to the downsampling path's map of
    that level (long residual connections, in place of U-Net's concatenation), each sum
    followed by a residual block; a 1×1 linear output.

    We could not read the paper's architecture figure: the number of levels, the widths
    (here 32-64-128-256, the default) and the downsampling by max pooling are our choice,
    not the paper's numbers. Batch norm after every convolution as in every model here.
    """

    name = "frcn"
    config_class = FRCNConfig
    target_kind = "proximity"
    output_activation = "linear"

    def __init__(self, config: FRCNConfig | None = None) -> None:
        super().__init__(config)
        b, cin = self.config.base, self.config.in_channels

        def up(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.pool = _pool()
        self.stem = _conv_bn_relu(cin, b)
        self.res1 = _ResidualBlock(b, b)
        self.res2 = _ResidualBlock(b, 2 * b)
        self.res3 = _ResidualBlock(2 * b, 4 * b)
        self.res4 = _ResidualBlock(4 * b, 8 * b, dropout=self.config.dropout)
        self.up5, self.res5 = up(8 * b, 4 * b), _ResidualBlock(4 * b, 4 * b)
        self.up6, self.res6 = up(4 * b, 2 * b), _ResidualBlock(2 * b, 2 * b)
        self.up7, self.res7 = up(2 * b, b), _ResidualBlock(b, b)
        self.head = nn.Conv2d(b, 1, kernel_size=1)

    def blocks(self) -> list[list[nn.Module]]:
        """The input convolution, the downsampling blocks, the upsampling levels (the last
        with the head)."""
        return [
            [self.stem],
            [self.res1],
            [self.res2],
            [self.res3],
            [self.res4],
            [self.up5, self.res5],
            [self.up6, self.res6],
            [self.up7, self.res7, self.head],
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.res1(self.stem(x))  # (B, b, H, W)
        s2 = self.res2(self.pool(s1))  # (B, 2b, H/2, W/2), rounded up
        s3 = self.res3(self.pool(s2))  # (B, 4b, H/4, W/4)
        y = self.res4(self.pool(s3))  # (B, 8b, H/8, W/8)
        y = self.res5(s3 + _crop(self.up5(y), s3))  # (B, 4b, H/4, W/4)
        y = self.res6(s2 + _crop(self.up6(y), s2))  # (B, 2b, H/2, W/2)
        y = self.res7(s1 + _crop(self.up7(y), s1))  # (B, b, H, W)
        return self.head(y)  # (B, 1, H, W) proximity


# Registry name → class: what model_from_config rebuilds checkpoints with.
BASELINES: dict[str, type[_Baseline]] = {cls.name: cls for cls in (FCN, UNet, FCRNA, FCRNB, FRCN)}


def fcn(**kwargs: Any) -> FCN:
    """FCN-8s (Long et al. 2015) on VGG-16; ``base=64`` is the paper's width."""
    return FCN.from_config_dict(kwargs)


def unet(**kwargs: Any) -> UNet:
    """U-Net (Ronneberger et al. 2015), 'same' padding; ``base=64`` is the paper's width."""
    return UNet.from_config_dict(kwargs)


def fcrn_a(**kwargs: Any) -> FCRNA:
    """FCRN-A (Xie, Noble, Zisserman 2016); ``base=32`` is the paper's width."""
    return FCRNA.from_config_dict(kwargs)


def fcrn_b(**kwargs: Any) -> FCRNB:
    """FCRN-B (Xie, Noble, Zisserman 2016); ``base=32`` is the paper's width."""
    return FCRNB.from_config_dict(kwargs)


def frcn(**kwargs: Any) -> FRCN:
    """FRCN (Xie et al. 2018), a fully residual network; ``base=32`` (our choice)."""
    return FRCN.from_config_dict(kwargs)


# The factories the registry lists (by function name); trainer/models.py registers them,
# so that this module imports nothing from it and the two form no import cycle.
FACTORIES = (fcn, unet, fcrn_a, fcrn_b, frcn)
