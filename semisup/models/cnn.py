"""Small CNNs for CPU runs: ``smallcnn`` (the project's default) and ``lenet``.

Both use cfg.width as a channel multiplier chosen so the default width=2 gives the usual widths
(32-64-128 for smallcnn, 32-64 convs + 128 hidden units for lenet); width=1 halves every layer.
Pooling is skipped once a map is 1 pixel wide, so 8x8 digits (and anything >= 1 px) work.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from .base import Classifier, gap, init_weights
from .fused import run_sequential
from .registry import MODELS


def _pool(size: int) -> tuple[nn.Module, int]:
    """2x2 max-pool and the new side length, or nothing when the map is already 1 px."""
    return (nn.MaxPool2d(2), size // 2) if size >= 2 else (nn.Identity(), size)


class SmallCNN(nn.Module):
    """VGG-style encoder: 3 stages of [conv-BN-act, conv-pool-BN-act], then global average pool.

    Widths 16w, 32w, 64w. Pooling sits *before* BN and the activation in each stage's second
    conv (as airbench): max-pool commutes with the monotone activation, and running BN on the
    4x smaller map cuts memory-bound time (~10 %: 140-160 vs 158-196 ms fwd+bwd for 512 28x28
    images, bf16 + channels_last, 2 cores; `benchmarks/micro/bench_models.py --variants`). Two convs per stage, not
    one: ~2x the time of the 3-conv variant (65 ms) for a deeper net, still well under the 0.25 s
    per 512-image step budget.
    """

    def __init__(self, in_channels: int, image_size: int, width: int, momentum: float, slope: float):
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = in_channels, image_size
        for cout in (16 * width, 32 * width, 64 * width):
            pool, size = _pool(size)
            layers += [
                nn.Conv2d(cin, cout, 3, 1, 1, bias=False),  # bias-free: BN follows
                nn.BatchNorm2d(cout, momentum=momentum),
                nn.LeakyReLU(slope, inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                pool,
                nn.BatchNorm2d(cout, momentum=momentum),
                nn.LeakyReLU(slope, inplace=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        return gap(run_sequential(self.features, x))  # (B, C, H, W) -> (B, 64w); BN + act fused on CPU


class LeNet(nn.Module):
    """conv5x5(16w)-ReLU-pool-conv5x5(32w)-ReLU-pool-flatten-fc(64w)-ReLU (LeNet / Pseudo-Label MNIST).

    'same' padding keeps 5x5 convs valid on 8x8 digits; the flatten size follows image_size.
    Features are the fc's ReLU output; the Classifier applies dropout to them before the head.
    """

    def __init__(self, in_channels: int, image_size: int, width: int):
        super().__init__()
        c1, c2, hidden = 16 * width, 32 * width, 64 * width
        pool1, size = _pool(image_size)
        pool2, size = _pool(size)
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, 1, 2),
            nn.ReLU(inplace=True),
            pool1,
            nn.Conv2d(c1, c2, 5, 1, 2),
            nn.ReLU(inplace=True),
            pool2,
        )
        self.fc = nn.Linear(c2 * size * size, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = hidden

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x)  # (B, 32w, H/4, W/4)
        return self.relu(self.fc(x.flatten(1)))  # (B, 64w)


@MODELS.register("smallcnn")
def smallcnn(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    enc = SmallCNN(in_channels, image_size, cfg.width, cfg.bn_momentum, cfg.leaky_slope)
    model = Classifier(enc, enc.out_channels, num_classes, cfg.dropout)
    init_weights(model)
    return model


@MODELS.register("lenet")
def lenet(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """Dropout is cfg.dropout when > 0, else 0.5: the net is defined with dropout (the config's
    default 0.0 suits the BN nets), so 0 cannot switch it off; use a tiny value if you must."""
    enc = LeNet(in_channels, image_size, cfg.width)
    model = Classifier(enc, enc.out_channels, num_classes, cfg.dropout if cfg.dropout > 0 else 0.5)
    init_weights(model)
    return model
