"""Any timm architecture as a semisup model: ``model.name=timm:<architecture>``.

The encoder is the timm model created with ``num_classes=0``, so it returns its pooled (pre-logits)
features (B, D); ``Classifier`` adds semisup's dropout and fresh linear head, so every algorithm,
``encode``, the report's t-SNE, export and ``model.init_from`` work on it unchanged. timm's own
weight initialisation is kept (semisup's ``init_weights`` is for its own CNNs).

``model.pretrained``: true -> timm downloads (and caches) the architecture's default weights; PATH ->
a local .safetensors / .pth / .pt / .bin state_dict of that architecture, loaded as timm loads its own
files: the model file's ``checkpoint_filter_fn`` (original-format checkpoints, ViT position
embeddings resampled to data.image_size), the first convolution adapted to the data's channels
(``adapt_input_conv``: greyscale data sums the RGB filters), the classifier dropped. Unlike timm's
loader, which loads what matches and logs the rest, every other key must fit: a file of another
architecture is an error naming the first key that does not fit, not a silently random encoder.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .base import Classifier

_LIST = "list them with: python -c \"import timm; print(timm.list_models('*convnext*'))\""


def _why(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters): errors here are one line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("model.name=timm:... needs timm: pip install timm (or pip install 'semisup[timm]')") from None
    return timm


def _create(timm, arch: str, in_channels: int, image_size: int, **kw) -> nn.Module:
    """timm.create_model with num_classes=0; img_size only where the architecture takes it (ViTs and other
    fixed-size models build their position embeddings for it; convnets take any size and reject the key)."""
    kw.update(num_classes=0, in_chans=in_channels)
    try:
        return timm.create_model(arch, img_size=image_size, **kw)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    return timm.create_model(arch, **kw)


def _read(path: Path) -> dict:
    """A state_dict from a .safetensors file or a torch file (plain, or under "state_dict" / "model")."""
    what = f"model.pretrained: {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{what} not found; pass a local .safetensors / .pth weights file, or model.pretrained=true "
                          "to download timm's weights")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a weights file, a pickle with objects: many types
        raise ConfigError(f"{what} is not a readable weights file ({type(e).__name__}); it may be truncated, or hold "
                          "more than tensors (loaded with weights_only; a semisup run's checkpoint goes to "
                          "model.init_from)") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{what} holds no state_dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}


def _first_misfit(sd: dict, model: nn.Module) -> str | None:
    want = model.state_dict()
    for k, v in sd.items():
        if k not in want:
            return f"unexpected key {k!r}"
        if v.shape != want[k].shape:
            return f"{k!r} has shape {tuple(v.shape)} in the file, {tuple(want[k].shape)} in the model"
    missing = [k for k in want if k not in sd and not k.endswith("num_batches_tracked")]
    return f"missing key {missing[0]!r}" if missing else None


def _load_file(timm, model: nn.Module, arch: str, path: Path, in_channels: int) -> None:
    sd = _read(path)
    fit = f"model.pretrained: {str(path)!r} does not fit timm:{arch}"
    hint = " (a semisup run's checkpoint: use model.init_from)" if any(k.startswith("encoder.") for k in sd) else ""
    try:
        # timm hands each model file's checkpoint_filter_fn to its loader; the entrypoint's module holds it
        module = None if ":" in arch else sys.modules.get(timm.models.model_entrypoint(arch.split(".")[0]).__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            sd = filter_fn(sd, model)
        pcfg = getattr(model, "pretrained_cfg", None) or {}
        convs = pcfg.get("first_conv") or ()
        for name in (convs,) if isinstance(convs, str) else convs:
            w, want = sd.get(f"{name}.weight"), model.get_submodule(name).weight  # (O, I, kH, kW)
            if w is not None and w.ndim == 4 and w.shape[1] != want.shape[1]:  # RGB file, greyscale data, ...
                sd[f"{name}.weight"] = timm.models.adapt_input_conv(in_channels, w)
        heads = pcfg.get("classifier") or ()
        for name in (heads,) if isinstance(heads, str) else heads:
            sd.pop(f"{name}.weight", None)
            sd.pop(f"{name}.bias", None)
    except Exception as e:  # a filter or adaptation that cannot handle a foreign file
        raise ConfigError(f"{fit}: {_why(e)}{hint}") from None
    misfit = _first_misfit(sd, model)
    if misfit:
        raise ConfigError(f"{fit}: {misfit}{hint}")
    # BN batch counters restart at 0, as for model.init_from: the loop's BN warm-up averages over this run's batches
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros_like(v)
    model.load_state_dict(sd, strict=True)


def build_timm(cfg: ModelConfig, arch: str, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """``timm:<arch>`` -> Classifier(timm encoder (B, C, H, W) -> (B, D), D features, num_classes)."""
    timm = _timm()
    if not arch or (":" not in arch and not timm.is_model(arch)):  # "hf-hub:..." names are timm's to resolve
        raise ConfigError(f"unknown timm architecture {arch!r} in model.name=timm:{arch}; {_LIST}")
    pretrained = cfg.pretrained
    try:
        encoder = _create(timm, arch, in_channels, image_size, pretrained=pretrained is True)
    except Exception as e:
        if pretrained is True:  # offline: huggingface / urllib raise many types, after their retries
            raise ConfigError(f"model.pretrained=true: timm could not get the weights of {arch!r} ({_why(e)}); "
                              f"without a network, download them elsewhere (timm.create_model({arch!r}, "
                              "pretrained=True), then safetensors' save_file(model.state_dict(), 'w.safetensors')) "
                              "and pass model.pretrained=PATH") from None
        raise ConfigError(f"timm could not build {arch!r} for {in_channels}x{image_size}x{image_size} images: "
                          f"{_why(e)}") from None
    if isinstance(pretrained, str) and pretrained:
        _load_file(timm, encoder, arch, Path(pretrained).expanduser(), in_channels)
    for m in encoder.modules():  # the loop's BN warm-up and EMA act on module.momentum
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = cfg.bn_momentum
    return Classifier(encoder, _probe(encoder, arch, in_channels, image_size), num_classes, cfg.dropout)


@torch.no_grad()
def _probe(encoder: nn.Module, arch: str, in_channels: int, image_size: int) -> int:
    """D, from one eval-mode forward of a blank image: an image size the architecture cannot take (a ViT's
    patch size that does not divide it, a convnet that downsamples a small image to nothing) fails here,
    with a config error, not at the first training step; eval mode leaves the BN statistics alone."""
    encoder.eval()
    try:
        out = encoder(torch.zeros(1, in_channels, image_size, image_size))  # (1, D)
    except Exception as e:
        size = (getattr(encoder, "pretrained_cfg", None) or {}).get("input_size", (0, 224))[-1]
        raise ConfigError(f"timm:{arch} does not run on {image_size}x{image_size} images ({_why(e)}); set "
                          f"data.image_size to a size it takes, e.g. its own {size}") from None
    encoder.train()
    if out.ndim != 2:
        raise ConfigError(f"timm:{arch} returns features of shape {tuple(out.shape)} with num_classes=0, not (B, D): "
                          "it has no global pooling; choose another architecture")
    return int(out.shape[1])
