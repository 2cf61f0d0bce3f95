"""CIFAR ResNet-18 (kuangliu/pytorch-cifar layout, used by many long-tail SSL papers).

Differences from ImageNet ResNet-18: a 3x3 stride-1 stem and no max-pool, so a 32 px image keeps
32x32 maps in the first stage (4x4 at the end). BasicBlocks [2, 2, 2, 2], post-activation, ReLU.

Width: base channels = 32 * cfg.width, so the default width=2 gives the standard 64-128-256-512
(11,173,962 parameters for 10 classes) and width=1 a half-width net that is ~4x cheaper on CPU.
BN momentum comes from cfg.bn_momentum like every other model (the config's default is
FixMatch's 0.001; torchvision's is 0.1).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from .base import Classifier, gap, init_weights
from .fused import bn_act, run_sequential
from .registry import MODELS


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=momentum)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, momentum=momentum)
            )

    def forward(self, x: Tensor) -> Tensor:
        o = bn_act(self.bn1, self.relu, self.conv1(x))  # relu(bn1(conv1(x))), fused on CPU; (B, Cout, H/s, W/s)
        o = self.bn2(self.conv2(o))
        return self.relu(o + self.shortcut(x))  # in place on the sum, which backward does not need


class ResNet(nn.Module):
    """Encoder: (B, C, H, W) -> (B, 8 * base)."""

    def __init__(self, in_channels: int, blocks: list[int], base: int, momentum: float):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base, 3, 1, 1, bias=False),
            nn.BatchNorm2d(base, momentum=momentum),
            nn.ReLU(inplace=True),
        )
        layers, cin = [], base
        for i, n in enumerate(blocks):
            cout = base * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, momentum))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(run_sequential(self.stem, x))  # (B, 8 * base, H/8, W/8)
        return gap(x)  # (B, 8 * base)


@MODELS.register("resnet18")
def resnet18(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    enc = ResNet(in_channels, [2, 2, 2, 2], 32 * cfg.width, cfg.bn_momentum)
    model = Classifier(enc, enc.out_channels, num_classes, cfg.dropout)
    init_weights(model)
    return model
