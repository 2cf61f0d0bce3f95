"""The one interface every model shares: :class:`Classifier` (an encoder, dropout and a float32 linear
head) returning :class:`ModelOutput`, and the initialisation and pooling the model files share."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    logits: Tensor  # (B, K) float32
    features: Tensor  # (B, D) float32, penultimate features (after global pooling, before the head)


def _to_float32(t: Tensor) -> Tensor:
    # upcast bf16/fp16 autocast results; leave float64 alone (numerical tests may use it)
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class Classifier(nn.Module):
    """``encoder`` maps (B, C, H, W) -> (B, D); this adds dropout and the linear head."""

    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.num_features = num_features
        self.frozen = False  # see freeze_encoder
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(num_features, num_classes)
        nn.init.xavier_normal_(self.head.weight)  # as FixMatch (TF: glorot_normal) and USB
        nn.init.zeros_(self.head.bias)

    def freeze_encoder(self) -> None:
        """Linear evaluation: the encoder's weights get no gradient (the optimizer skips them) and its
        batch norm stays in eval mode whatever ``train()`` is called with, so its running statistics,
        part of the representation being evaluated, do not move either."""
        self.encoder.requires_grad_(False)
        self.frozen = True
        self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode(self, x: Tensor) -> Tensor:
        return _to_float32(self.encoder(x))  # (B, D)

    def forward(self, x: Tensor) -> ModelOutput:
        feats = self.encode(x)  # (B, D)
        with torch.autocast(x.device.type, enabled=False):
            logits = self.head(self.drop(feats))  # (B, K) float32 even under autocast
        return ModelOutput(logits, feats)


def init_weights(module: nn.Module) -> None:
    """FixMatch / USB initialisation, shared by all models so they compare on the same footing.

    kaiming_normal fan_out with nonlinearity='leaky_relu' and the default a=0 is the reference's
    exact call; its gain is sqrt(2), i.e. TF FixMatch's stddev = rsqrt(0.5 * k * k * filters).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def gap(x: Tensor) -> Tensor:
    """Global average pool (B, C, H, W) -> (B, C); keeps channels_last inputs on the fast kernel."""
    return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, C)
