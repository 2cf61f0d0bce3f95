"""Models: ``build_model`` over the registry (``registry.py``) and the one interface every model shares
(``base.py``); importing this package registers every model.

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

import torch
from torch import nn

from ..config import ModelConfig, auto_bn_momentum
from ..errors import ConfigError
from . import cnn, resnet, wrn  # noqa: F401  (importing a model file registers its models)
from .base import Classifier, ModelOutput
from .registry import MODELS

__all__ = ["MODELS", "Classifier", "ModelOutput", "build_model", "load_encoder"]

_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel and torch.compile


def load_encoder(model: Classifier, path: str | Path, head: bool = False) -> None:
    """Copy the ``encoder.*`` weights of a checkpoint into ``model``, and its ``head.*`` weights when ``head``.

    Accepted files: a state_dict, or a dict holding one under "model" or "state_dict" (a run's
    ``last.pt``, a SimCLR backbone). The head is skipped by default so a checkpoint trained with another
    number of classes or a projection head still initialises the encoder; ``head`` continues a run's
    whole classifier (same classes) under another algorithm.
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
    enc, head_sd = {}, {}
    for k, v in state.items():
        for pre in _PREFIXES:
            k = k.removeprefix(pre)
        if k.startswith("encoder."):
            enc[k.removeprefix("encoder.")] = v
        elif k.startswith("head."):
            head_sd[k.removeprefix("head.")] = v
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
    if head:
        want = tuple(model.head.weight.shape)
        got = tuple(head_sd["weight"].shape) if "weight" in head_sd else None
        if got != want or set(head_sd) != {"weight", "bias"}:
            raise ConfigError(f"model.init_head: {str(p)!r} has " + ("no classifier head" if got is None else
                              f"a head of shape {got}") + f", this model's is {want} (classes x features); "
                              "set model.init_head=false to start a new head")
        model.head.load_state_dict(head_sd)


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
    if cfg.init_head and not cfg.init_from:
        raise ConfigError("model.init_head=true loads the head of model.init_from: set model.init_from=PATH too")
    if cfg.init_from:
        load_encoder(model, cfg.init_from, head=cfg.init_head)
    if cfg.freeze_encoder:
        if not cfg.init_from:
            raise ConfigError("model.freeze_encoder=true needs trained encoder weights: set model.init_from=PATH "
                              "(an encoder.pt from `semisup pretrain`, or a run's best.pt)")
        model.freeze_encoder()
    return model

