"""SimCLR's augmentation (Chen et al. 2020, appendix A) as a batched transform of uint8 (B, C, H, W).

Per image, in SimCLR's order: a random resized crop back to H x W (area fraction ~ U(scale), aspect
ratio log-uniform in ``ratio``, torchvision's RandomResizedCrop sampling with 10 tries and the same
fallback), a horizontal flip with p = 0.5 (only if the dataset allows flips, as the loop's other
views), then for RGB images ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with p = 0.8 (the four ops in a
random order per image, as torchvision) and grayscale with p = 0.2.

Choices, documented: ``scale`` defaults to (0.2, 1) rather than ImageNet's (0.08, 1), because on
28-32 px images an 8 % crop is a 9 x 9 patch that keeps little of the object (SimCLR's CIFAR runs and
most small-image reproductions use 0.2); s = 0.5 is SimCLR's CIFAR-10 strength; Gaussian blur is left
out, as SimCLR does for CIFAR. Colour ops are skipped on 1-channel images (there is no colour to
distort; brightness/contrast alone would be a different augmentation than the paper's). Crop and flip
are one bilinear ``grid_sample`` per batch (torchvision resizes crops bilinearly too); brightness,
contrast, saturation and grayscale reuse the PIL-exact ops of :mod:`semisup.data.transforms`; the
hue shift (no PIL equivalent there) goes through HSV in float32 like torchvision's adjust_hue.
All randomness comes from the given ``torch.Generator``: the same state gives the same views.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .transforms import _col, brightness, color, contrast, grayscale


def crop_params(B: int, H: int, W: int, gen: torch.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                tries: int = 10) -> Tensor:
    """torchvision RandomResizedCrop.get_params for a batch: (B, 4) float (top, left, height, width) in
    pixels, integers as torchvision's. The first of ``tries`` draws that fits is used, else the fallback
    (the whole image, or its centre clamped to the aspect range)."""
    kw = {"generator": gen, "device": gen.device}
    area = H * W * (scale[0] + (scale[1] - scale[0]) * torch.rand(B, tries, **kw))  # (B, tries)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(B, tries, **kw))  # (B, tries)
    w = torch.sqrt(area * aspect).round()  # (B, tries)
    h = torch.sqrt(area / aspect).round()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (B, tries)
    first = ok.float().argmax(1, keepdim=True)  # (B, 1): the first try that fits (0 if none does)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)  # (B,)
    in_ratio = W / H
    fw, fh = (W, round(W / ratio[0])) if in_ratio < ratio[0] else (round(H * ratio[1]), H) \
        if in_ratio > ratio[1] else (W, H)
    w, h = torch.where(found, w, float(fw)), torch.where(found, h, float(fh))
    u = torch.rand(B, 2, **kw)
    top = torch.where(found, (u[:, 0] * (H - h + 1)).floor(), float((H - fh) // 2))
    left = torch.where(found, (u[:, 1] * (W - w + 1)).floor(), float((W - fw) // 2))
    return torch.stack([top, left, h, w], 1)


def resized_crop(x: Tensor, box: Tensor, flip: Tensor) -> Tensor:
    """Crop box (B, 4) = (top, left, height, width) of each image, h-flipped where flip (B,) bool,
    resized bilinearly back to H x W. x uint8 (B, C, H, W) -> uint8 (B, C, H, W), rounded."""
    B, C, H, W = x.shape
    box = box.to(x.device, torch.float32)
    top, left, h, w = box.unbind(1)  # (B,) each
    sx = torch.where(flip.to(x.device), -1.0, 1.0) * w / W  # a negative x scale mirrors the crop
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * left + w) / W - 1  # box centre in [-1, 1] coordinates
    theta[:, 1, 1], theta[:, 1, 2] = h / H, (2 * top + h) / H - 1
    grid = F.affine_grid(theta, [B, C, H, W], align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)  # (B, C, H, W)


def hue(x: Tensor, shift: Tensor | float) -> Tensor:
    """Rotate the hue by ``shift`` turns (torchvision adjust_hue, per image; within one level of it).
    x uint8 (B, 3, H, W). Worked on the 0..255 scale: value v = max, chroma c = max - min are kept, so
    each output channel is v - c * clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for
    R, G, B: it lies in [min, max] and needs no clamp."""
    f = x.float()  # (B, 3, H, W)
    v, vi = f.max(1)  # (B, H, W) value and which channel holds it (first on ties: R, then G, as HSV)
    c = v - f.amin(1)  # (B, H, W) chroma
    r, g, b = f.unbind(1)
    num = torch.where(vi == 0, g - b, torch.where(vi == 1, b - r, r - g))  # 0 where c = 0 (grey)
    h6 = num.div_(c.clamp(min=1e-6)).add_(2 * vi).add_(6 * _col(shift, x)[:, 0])  # (B, H, W) hue * 6
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + h6.unsqueeze(1)).remainder_(6)
    t = torch.minimum(k, 4 - k).clamp_(0, 1)  # (B, 3, H, W)
    return torch.addcmul(v.unsqueeze(1), c.unsqueeze(1), t, value=-1).round_().to(torch.uint8)


COLOUR_OPS = (brightness, contrast, color, hue)  # ColorJitter's brightness, contrast, saturation, hue


def colour_jitter(x: Tensor, gen: torch.Generator, s: float = 0.5, p: float = 0.8) -> Tensor:
    """ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) with probability p per image, the ops in a random order
    per image. x uint8 (B, 3, H, W)."""
    B = x.shape[0]
    kw = {"generator": gen, "device": gen.device}
    apply = (torch.rand(B, **kw) < p).cpu()  # (B,)
    order = torch.argsort(torch.rand(B, 4, **kw), dim=1).cpu()  # (B, 4): image b's r-th op is order[b, r]
    u = torch.rand(4, B, **kw).cpu()
    b = 0.8 * s
    lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - b), max(0.0, 1 - b), -0.2 * s]).view(4, 1)
    hi = torch.tensor([1 + b, 1 + b, 1 + b, 0.2 * s]).view(4, 1)
    factor = lo + (hi - lo) * u  # (4, B)
    out = x.clone()
    for r in range(4):
        for k, op in enumerate(COLOUR_OPS):
            idx = (apply & (order[:, r] == k)).nonzero().squeeze(1)  # images whose r-th op is op k
            if len(idx):
                idx_d = idx.to(x.device)
                out[idx_d] = op(out[idx_d], factor[k, idx])
    return out


def random_grayscale(x: Tensor, gen: torch.Generator, p: float = 0.2) -> Tensor:
    """Grayscale (PIL's L, repeated over 3 channels) with probability p per image. x uint8 (B, 3, H, W)."""
    sel = (torch.rand(x.shape[0], generator=gen, device=gen.device) < p).to(x.device)  # (B,)
    gray = grayscale(x).to(torch.uint8).expand_as(x)  # (B, 3, H, W)
    return torch.where(sel.view(-1, 1, 1, 1), gray, x)


def simclr_view(x: Tensor, gen: torch.Generator, hflip: bool = True, scale=(0.2, 1.0),
                ratio=(3 / 4, 4 / 3), s: float = 0.5, p_jitter: float = 0.8, p_gray: float = 0.2) -> Tensor:
    """One SimCLR view of each image: x uint8 (B, C, H, W) -> uint8 (B, C, H, W) (see the module doc)."""
    B, C, H, W = x.shape
    if B == 0:
        return x
    box = crop_params(B, H, W, gen, scale, ratio)  # (B, 4)
    flip = torch.rand(B, generator=gen, device=gen.device) < 0.5 if hflip else torch.zeros(B, dtype=torch.bool)
    out = resized_crop(x, box, flip)
    if C == 3:  # colour distortion only where there is colour
        out = random_grayscale(colour_jitter(out, gen, s, p_jitter), gen, p_gray)
    return out
