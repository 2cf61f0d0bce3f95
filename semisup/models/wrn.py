"""Wide ResNet as used by FixMatch / USB (WRN-28-2: 1,467,610 parameters for 10 classes).

Follows the TF FixMatch original (google-research/fixmatch, libml/models.py ``ResNet``) and its
PyTorch ports (kekmodel/FixMatch-pytorch models/wideresnet.py, USB semilearn/nets/wrn/wrn.py):
pre-activation blocks BN -> LeakyReLU(0.1) -> conv3x3 -> BN -> LeakyReLU -> conv3x3; widths
16, 16w, 32w, 64w; a 1x1 shortcut conv where the width changes; BN momentum 0.001 (PyTorch
convention, TF's 0.999); final BN -> LeakyReLU -> global average pool; dropout before the head.

"activate_before_residual" (first block of the first group only): the shortcut also takes the
BN-activated input instead of the raw one, because that block sits right after the bare stem conv.

Deviations, each on purpose:
- Bias-free convolutions as kekmodel (TF and USB add biases: a bias before BN is redundant;
  this is what gives the reference figure 1,467,610).
- In the other width-changing blocks kekmodel feeds the *raw* input to conv1, so that block's
  bn1 is computed and thrown away (its parameters never get a gradient). We follow TF: conv1
  always reads the pre-activated input, only the shortcut reads the raw one. Same parameters.
- Dropout (cfg.dropout) sits before the head as in TF FixMatch; kekmodel/USB put it between the
  two convs of each block. FixMatch uses 0, so results are unaffected at the default.
- BN eps 1e-3 as TF and USB (kekmodel: PyTorch's 1e-5).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from .base import Classifier, gap, init_weights
from .fused import bn_act
from .registry import MODELS

BN_EPS = 1e-3  # TF batch_normalization's default, kept by USB


def _bn(c: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=momentum)


class WideBlock(nn.Module):
    """Pre-activation residual block; a 1x1 conv shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, stride: int, momentum: float, slope: float, activate_before_residual: bool):
        super().__init__()
        self.bn1 = _bn(cin, momentum)
        self.act1 = nn.LeakyReLU(slope, inplace=True)  # in place: BN's output is not needed for backward
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = _bn(cout, momentum)
        self.act2 = nn.LeakyReLU(slope, inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None
        self.activate_before_residual = activate_before_residual

    def forward(self, x: Tensor) -> Tensor:
        o = bn_act(self.bn1, self.act1, x)  # act1(bn1(x)), fused on CPU (fused.py); (B, Cin, H, W)
        if self.activate_before_residual:
            x = o  # the shortcut sees the activated input too
        o = self.conv2(bn_act(self.bn2, self.act2, self.conv1(o)))  # (B, Cout, H/s, W/s)
        return o + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """Encoder: (B, C, H, W) -> (B, 64 * widen); any H, W (global pooling at the end)."""

    def __init__(self, in_channels: int, depth: int, widen: int, momentum: float, slope: float):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"model.depth={depth} is not a Wide ResNet depth: need (depth - 4) % 6 == 0, >= 10")
        n = (depth - 4) // 6  # blocks per group
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups = []
        for g in range(3):
            blocks = [
                WideBlock(
                    widths[g] if i == 0 else widths[g + 1],
                    widths[g + 1],
                    (1 if g == 0 else 2) if i == 0 else 1,
                    momentum,
                    slope,
                    activate_before_residual=(g == 0 and i == 0),
                )
                for i in range(n)
            ]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = _bn(widths[3], momentum)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.out_channels = widths[3]

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)  # (B, 16, H, W)
        x = self.block3(self.block2(self.block1(x)))  # (B, 64w, H/4, W/4)
        return gap(bn_act(self.bn, self.act, x))  # (B, 64w)


@MODELS.register("wrn")
def wrn(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """WRN-depth-width (default WRN-28-2). ``image_size`` is not needed: pooling is global."""
    enc = WideResNet(in_channels, cfg.depth, cfg.width, cfg.bn_momentum, cfg.leaky_slope)
    model = Classifier(enc, enc.out_channels, num_classes, cfg.dropout)
    init_weights(model)
    return model
