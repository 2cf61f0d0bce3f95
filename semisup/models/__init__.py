"""Model registry and the one interface every model shares.

A model is ``Classifier(encoder, num_features, num_classes, dropout)``:

    encode(x)  -> features (B, D): everything but dropout and the head, returned in float32
    forward(x) -> ModelOutput(logits (B, K), features (B, D)); logits = head(dropout(features))
    head       -> nn.Linear(D, K), a plain attribute so SimCLR / ABC can swap or add heads
    freeze_encoder() -> linear evaluation: encoder fixed (no gradient, batch norm in eval mode)
    num_features -> D

The head always runs in float32 with autocast switched off: it is a (D x K) matmul, free next to
the convolutions, and pseudo-labelling thresholds softmax(logits) at values like 0.95, which a
bfloat16 result (8 mantissa bits: 0.95 rounds to 0.949 or 0.953) would blur.

Registry factories are plain functions ``f(cfg, num_classes, in_channels, image_size)``. A name
``timm:<architecture>`` builds any timm model instead (timm_backbone.py; timm is imported only then).
Layering: models import config / registry / errors only, never training code.
"""
from __future__ import annotations

import dataclasses
import numbers
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import ModelConfig, auto_bn_momentum
from ..errors import ConfigError
from ..registry import Registry

MODELS = Registry("model")


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


_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile


def load_encoder(model: Classifier, path: str | Path) -> None:
    """Copy the ``encoder.*`` weights of a checkpoint into ``model`` (the head is never loaded).

    Accepted files: a state_dict, or a dict holding one under "model" or "state_dict" (a run's
    ``last.pt``, a SimCLR backbone). The head is skipped so a checkpoint trained with another
    number of classes or a projection head still initialises the encoder.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model.init_from: checkpoint {str(p)!r} not found")
    # weights_only=False: run checkpoints may hold numpy RNG states; only load files you trust
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated zip, a foreign pickle, a directory: many types
        raise ConfigError(f"model.init_from: {str(p)!r} is not a readable checkpoint, it may be truncated or "
                          f"corrupt ({type(e).__name__})") from None
    state = ckpt
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
    if not isinstance(state, dict):
        raise ConfigError(f"model.init_from: {str(p)!r} holds no state_dict")
    enc = {}
    for k, v in state.items():
        for pre in _PREFIXES:
            k = k.removeprefix(pre)
        if k.startswith("encoder."):
            enc[k.removeprefix("encoder.")] = v
    if not enc:
        raise ConfigError(f"model.init_from: {str(p)!r} has no 'encoder.*' weights")
    # Batch-norm batch counters start again at 0: the loop's BN warm-up is a cumulative average over the
    # run's own batches (momentum None, factor 1 / num_batches_tracked), so a counter carried over from
    # pretraining (2500 SimCLR steps) would freeze the running statistics at the pretraining views'
    # values and evaluate a fine-tuned model with them. The loaded running statistics stay for what
    # never updates them (a frozen encoder's eval-mode BN in linear evaluation).
    for k in [k for k in enc if k.endswith("num_batches_tracked")]:
        enc[k] = torch.zeros_like(enc[k])
    try:
        model.encoder.load_state_dict(enc, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(
            f"model.init_from: {str(p)!r} does not fit model {model.encoder.__class__.__name__}: "
            f"{' '.join(first[1:3] or first)}"
        ) from None


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build ``cfg.name`` (a registered name, or ``timm:<architecture>``) for the data's shape; load encoder
    weights from ``cfg.init_from`` (after ``cfg.pretrained``'s, which it replaces)."""
    dims = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    for what, v in dims.items():
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 1:  # numpy ints are fine
            raise ConfigError(f"build_model: {what} must be a positive integer, got {v!r}")
    if cfg.bn_momentum == "auto":  # a ModelConfig not resolved with a run's length: the long-run value
        cfg = dataclasses.replace(cfg, bn_momentum=auto_bn_momentum(None))
    if cfg.name.startswith("timm:"):  # any timm architecture; timm is imported only here, semisup runs without it
        from .timm_backbone import build_timm

        model = build_timm(cfg, cfg.name.removeprefix("timm:"), int(num_classes), int(in_channels), int(image_size))
    else:
        if cfg.pretrained:
            raise ConfigError(f"model.pretrained is for model.name=timm:<architecture>, not {cfg.name!r}; semisup's "
                              "own models start from a run's weights: model.init_from=PATH (a best.pt or encoder.pt)")
        model = MODELS.get(cfg.name)(cfg, int(num_classes), int(in_channels), int(image_size))
    if cfg.init_from:
        load_encoder(model, cfg.init_from)
    if cfg.freeze_encoder:
        if not cfg.init_from:
            raise ConfigError("model.freeze_encoder=true needs trained encoder weights: set model.init_from=PATH "
                              "(an encoder.pt from `semisup pretrain`, or a run's best.pt)")
        model.freeze_encoder()
    return model


# the model files register themselves; imported last because they use the names above
from . import cnn, resnet, wrn  # noqa: E402,F401
