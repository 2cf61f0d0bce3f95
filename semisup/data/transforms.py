"""Batched augmentation of uint8 image batches (B, C, H, W), C in {1, 3}.

Why batched: a FixMatch step needs ~960 augmented images; a per-image loop (torchvision's
RandAugment) manages ~8k images/s on one core and would eat the 2-core budget. Every op here is vectorised
over the batch with per-sample magnitudes given as (B,) tensors, so tests can call each op at a
fixed magnitude and compare it with PIL. All randomness is drawn from an explicit
`torch.Generator` (params sampled on the generator's device, then moved to the batch's device),
so the same generator state gives the same output. Inputs are never modified in place; ops
that do nothing may return the input tensor itself.

PIL semantics implemented (Pillow 13): ImageEnhance ops are `Image.blend(degenerate, img, f)`
computed in float32 and *truncated* like PIL; grayscale is PIL's rounded
L = (19595 R + 38470 G + 7471 B + 2^15) >> 16; Contrast blends with the rounded mean of L;
Sharpness blends with PIL's SMOOTH filter (kernel [[1,1,1],[1,5,1],[1,1,1]]/13, rounded,
1-px border copied); AutoContrast (cutoff 0), Equalize, Posterize and Solarize follow
ImageOps' LUT formulas; geometric ops follow PIL's AFFINE/NEAREST transform (source =
M @ (x + .5, y + .5, 1), floored), shear about the top-left corner and rotation about the
centre like PIL/FixMatch. Deviations: out-of-image pixels are filled with gray 128 (FixMatch
fills with normalised 0 = 127.5) rather than PIL's black; float32 instead of double arithmetic
may differ by one level at exact ties.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from semisup.errors import ConfigError

GEO_FILL = 128  # gray for pixels mapped from outside the image (FixMatch: 127.5)


def _col(v: Tensor | float, x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-sample magnitude -> (B, 1, 1, 1) tensor on the batch's device."""
    v = torch.as_tensor(v, dtype=dtype).to(x.device)
    return v.expand(x.shape[0]).reshape(-1, 1, 1, 1)


def _blend(degenerate: Tensor, x: Tensor, f: Tensor | float) -> Tensor:
    """PIL Image.blend(degenerate, x, f) = trunc(deg + f * (x - deg)), clamped to uint8."""
    out = degenerate + _col(f, x) * (x.float() - degenerate)  # (B, C, H, W)
    return out.clamp_(0, 255).to(torch.uint8)  # float -> uint8 truncates, like PIL


def grayscale(x: Tensor) -> Tensor:
    """PIL convert('L') with its rounding: (B, C, H, W) uint8 -> (B, 1, H, W) int32."""
    if x.shape[1] == 1:
        return x.to(torch.int32)
    r, g, b = x.to(torch.int32).unbind(1)  # (B, H, W) each
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1)


# ---- colour ops: (x uint8 (B, C, H, W), magnitude (B,)) -> uint8 (B, C, H, W) ----
def identity(x: Tensor, v: Tensor | None = None) -> Tensor:
    return x


def brightness(x: Tensor, f: Tensor | float) -> Tensor:
    """ImageEnhance.Brightness(f): blend with black; f = 1 is the identity."""
    return _blend(x.new_zeros((), dtype=torch.float32), x, f)


def color(x: Tensor, f: Tensor | float) -> Tensor:
    """ImageEnhance.Color(f): blend with the grayscale image; identity for C = 1."""
    if x.shape[1] == 1:
        return x
    return _blend(grayscale(x).float(), x, f)


def contrast(x: Tensor, f: Tensor | float) -> Tensor:
    """ImageEnhance.Contrast(f): blend with a flat image at int(mean(L) + 0.5)."""
    hw = x.shape[2] * x.shape[3]
    s = grayscale(x).sum((1, 2, 3), keepdim=True, dtype=torch.int64)  # (B, 1, 1, 1)
    return _blend(((2 * s + hw) // (2 * hw)).float(), x, f)  # exact integer rounding


def sharpness(x: Tensor, f: Tensor | float) -> Tensor:
    """ImageEnhance.Sharpness(f): blend with PIL's SMOOTH-filtered image (border untouched)."""
    B, C, H, W = x.shape
    if H < 3 or W < 3:
        return x
    xf = x.float()
    rows = xf[:, :, :-2] + xf[:, :, 1:-1] + xf[:, :, 2:]  # (B, C, H-2, W) vertical 3-sums
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # (B, C, H-2, W-2) 3x3 sums
    # separable sums beat a grouped conv2d ~8x here; sums of <= 13 * 255 are exact in float32
    smooth = ((box + 4 * xf[:, :, 1:-1, 1:-1]) / 13).round_()  # never a .5 tie (13 is odd)
    deg = xf.clone()
    deg[:, :, 1:-1, 1:-1] = smooth
    return _blend(deg, x, f)


def auto_contrast(x: Tensor, v: Tensor | None = None) -> Tensor:
    """ImageOps.autocontrast(cutoff=0): per channel, stretch [min, max] to [0, 255]."""
    lo = x.amin((2, 3), keepdim=True).double()  # (B, C, 1, 1)
    hi = x.amax((2, 3), keepdim=True).double()
    flat = hi <= lo
    scale = 255.0 / torch.where(flat, 1.0, hi - lo)
    out = (x.double() * scale - lo * scale).clamp_(0, 255).to(torch.uint8)  # PIL: int(ix*scale+offset)
    return torch.where(flat, x, out)


def equalize(x: Tensor, v: Tensor | None = None) -> Tensor:
    """ImageOps.equalize per image and channel (Pillow >= 9: step = non-max pixels // 255).
    torchvision's batched kernel implements exactly PIL's LUT and beat our bincount version
    (2.6 vs 4.1 ms per 448x3x32x32 batch, see benchmarks/micro/bench_augment.py)."""
    return TF.equalize(x)


def posterize(x: Tensor, bits: Tensor | float) -> Tensor:
    """ImageOps.posterize: keep the top floor(bits) bits (bits in [1, 8])."""
    b = _col(bits, x).floor().clamp(1, 8).long()
    return x & ((255 << (8 - b)) & 255).to(torch.uint8)


def solarize(x: Tensor, threshold: Tensor | float) -> Tensor:
    """ImageOps.solarize: invert pixels >= threshold (threshold 256 = identity)."""
    return torch.where(x >= _col(threshold, x), 255 - x, x)


# ---- geometric ops: a per-sample PIL affine matrix (B, 2, 3), applied by one gather ----
def warp(x: Tensor, m: Tensor, fill: int = GEO_FILL) -> Tensor:
    """PIL Image.transform(AFFINE, NEAREST) per sample: out(y, x) = in(floor(M @ (x+.5, y+.5, 1)))."""
    B, C, H, W = x.shape
    m = m.to(x.device, torch.float32)
    ys = (torch.arange(H, device=x.device, dtype=torch.float32) + 0.5).view(1, H, 1)
    xs = (torch.arange(W, device=x.device, dtype=torch.float32) + 0.5).view(1, 1, W)
    a, b, c, d, e, f = (m.reshape(B, 6)[:, i].view(B, 1, 1) for i in range(6))
    ix = (a * xs + b * ys + c).floor_().long()  # (B, H, W) source columns
    iy = (d * xs + e * ys + f).floor_().long()  # (B, H, W) source rows
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
    idx = torch.where(inside, iy * W + ix, H * W).view(B, 1, H * W)  # H*W -> the fill slot
    src = torch.cat([x.reshape(B, C, H * W), x.new_full((B, C, 1), fill)], 2)  # (B, C, HW+1)
    return src.gather(2, idx.expand(B, C, H * W)).view(B, C, H, W)


def _affine(v: Tensor, row: int, col: int) -> Tensor:
    """Identity matrices (B, 2, 3) with the off-diagonal entry [row, col] set to v."""
    m = torch.eye(2, 3).repeat(len(v), 1, 1)
    m[:, row, col] = v.float()
    return m


def _rotate_m(deg: Tensor, h: int, w: int) -> Tensor:
    """PIL Image.rotate(deg) (counter-clockwise, about (w/2, h/2)) as (B, 2, 3)."""
    t = -torch.deg2rad(deg.double())
    c, s = torch.cos(t), torch.sin(t)
    cx, cy = w / 2, h / 2
    m = torch.stack([c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy], 1)
    return m.view(-1, 2, 3).float()


_GEO = {  # name -> matrix builder (magnitude (B,), H, W) -> (B, 2, 3)
    "rotate": _rotate_m,  # degrees
    "shear_x": lambda r, h, w: _affine(r, 0, 1),  # src_x = x + r * y
    "shear_y": lambda r, h, w: _affine(r, 1, 0),  # src_y = y + r * x
    "translate_x": lambda t, h, w: _affine(t * w, 0, 2),  # t: fraction of the width
    "translate_y": lambda t, h, w: _affine(t * h, 1, 2),
}


def _geo_op(name: str) -> Callable[[Tensor, Tensor | float], Tensor]:
    def op(x: Tensor, v: Tensor | float) -> Tensor:
        v = torch.as_tensor(v, dtype=torch.float32).expand(x.shape[0])
        return warp(x, _GEO[name](v, x.shape[2], x.shape[3]))

    op.__name__ = name
    return op


rotate, shear_x, shear_y = _geo_op("rotate"), _geo_op("shear_x"), _geo_op("shear_y")
translate_x, translate_y = _geo_op("translate_x"), _geo_op("translate_y")


def _enh(m_lo: float, m_hi: float) -> tuple[float, float]:
    """FixMatch's reference-code map of a magnitude m to an ImageEnhance factor: 0.1 + 1.8 m."""
    return 0.1 + 1.8 * m_lo, 0.1 + 1.8 * m_hi


# The FixMatch pool as (name, op, lo, hi): magnitude = lo + (hi - lo) * U(0, 1) per image.
# Geometric ops come last so that, after sorting a batch by op, they form one warp() call.
POOL: tuple[tuple[str, Callable, float, float], ...] = (
    ("identity", identity, 0.0, 0.0),
    ("auto_contrast", auto_contrast, 0.0, 0.0),
    ("equalize", equalize, 0.0, 0.0),
    ("brightness", brightness, *_enh(0.05, 0.95)),
    ("color", color, *_enh(0.05, 0.95)),
    ("contrast", contrast, *_enh(0.05, 0.95)),
    ("sharpness", sharpness, *_enh(0.05, 0.95)),
    ("posterize", posterize, 4.0, 9.0),  # floor -> bits uniform on {4, ..., 8}
    ("solarize", solarize, 0.0, 256.0),  # threshold T * 256, T in [0, 1]
    ("rotate", rotate, -30.0, 30.0),
    ("shear_x", shear_x, -0.3, 0.3),
    ("shear_y", shear_y, -0.3, 0.3),
    ("translate_x", translate_x, -0.3, 0.3),
    ("translate_y", translate_y, -0.3, 0.3),
)
_N_COLOUR = 9  # POOL[:9] are pixel-wise/colour ops, POOL[9:] geometric


def randaugment(x: Tensor, gen: torch.Generator, n: int = 2) -> Tensor:
    """FixMatch's RandAugment (Sohn et al. 2020, appendix table): per image, `n` ops drawn
    uniformly with replacement from the 14-op POOL, each with a magnitude ~ U(range).

    Enhance factors: the paper's table lists B, C, S in [0.05, 0.95]. Read as PIL factors
    (0 = degenerate, 1 = original) these only ever darken/blur/desaturate; kekmodel's
    FixMatch-pytorch (and TorchSSL/USB after it) does exactly that. FixMatch's reference code
    (third_party/auto_augment/augmentations.py, `_enhancer_impl`) instead uses
    factor = 0.1 + 1.8 * level / 10 with level ~ randint(1, 10), i.e. [0.28, 1.72]. We use
    the reference code's map on the paper's range: factor = 0.1 + 1.8 m, m ~ U(0.05, 0.95),
    i.e. factor in [0.19, 1.81], symmetric around the identity. Other deviations from the
    reference code, which follow the paper's table instead: continuous magnitudes, no
    per-op application probability of 0.5, Posterize 4..8 bits (code: 1..4), translate by a
    fraction of the size (code: integer pixels). Geometric fill: gray 128, nearest sampling.
    """
    B = x.shape[0]
    if n <= 0 or B == 0:
        return x
    ops = torch.randint(len(POOL), (n, B), generator=gen, device=gen.device).cpu()
    u = torch.rand((n, B), generator=gen, device=gen.device).cpu()
    lo = torch.tensor([p[2] for p in POOL])
    hi = torch.tensor([p[3] for p in POOL])
    return apply_ops(x, ops, lo[ops] + (hi[ops] - lo[ops]) * u)


def apply_ops(x: Tensor, ops: Tensor, mags: Tensor) -> Tensor:
    """Round r applies op POOL[ops[r, b]] at magnitude mags[r, b] to image b, for r = 0, 1, ...:
    ops, mags (n, B) on the CPU; magnitudes in each op's own unit (factor, bits, threshold, degrees,
    shear, fraction of the size)."""
    B = x.shape[0]
    for r in range(ops.shape[0]):
        # Sort the batch by op so each op sees one contiguous slice (no per-sample loop).
        order = torch.argsort(ops[r], stable=True)  # (B,)
        op = ops[r][order]  # (B,) sorted op ids
        mag = mags[r][order].float()  # (B,) sorted magnitudes
        counts = torch.bincount(op, minlength=len(POOL)).tolist()
        order_d = order.to(x.device)
        xs = x.index_select(0, order_d)  # (B, C, H, W) sorted by op; index_select: row memcpy
        starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
        outs = [POOL[k][1](xs[starts[k] : starts[k + 1]], mag[starts[k] : starts[k + 1]])
                for k in range(_N_COLOUR) if counts[k]]
        g0 = starts[_N_COLOUR]
        if g0 < B:  # all geometric ops in one gather with per-sample matrices
            mats = [_GEO[POOL[k][0]](mag[starts[k] : starts[k + 1]], *x.shape[2:])
                    for k in range(_N_COLOUR, len(POOL)) if counts[k]]
            outs.append(warp(xs[g0:], torch.cat(mats)))
        x = torch.cat(outs).index_select(0, torch.argsort(order_d))  # back to input order
    return x


# RandAugmentMC (kekmodel/FixMatch-pytorch, dataset/randaugment.py; used by the ARL, ABC and DASO reference
# codes): a level v in {1, ..., m - 1} per op maps to the op's magnitude as max_v * v / 10 + bias.
_MC = {  # POOL name -> (max_v, bias, integer, random sign)
    "brightness": (0.9, 0.05, False, False), "color": (0.9, 0.05, False, False),
    "contrast": (0.9, 0.05, False, False), "sharpness": (0.9, 0.05, False, False),
    "posterize": (4, 4, True, False), "solarize": (256, 0, True, False), "rotate": (30, 0, True, True),
    "shear_x": (0.3, 0, False, True), "shear_y": (0.3, 0, False, True),
    "translate_x": (0.3, 0, False, True), "translate_y": (0.3, 0, False, True),
}


def randaugment_mc(x: Tensor, gen: torch.Generator, n: int = 2, m: int = 10, cutout_px: int = 16) -> Tensor:
    """kekmodel's RandAugmentMC(n, m) as the ARL, ABC and DASO reference codes use it: per image, ``n`` ops
    drawn uniformly with replacement from the same 14 ops as ``randaugment``, each at a level
    v ~ randint(1, m) (numpy's: 1 .. m - 1) and applied with probability 0.5; then a gray (127) square
    of ``cutout_px`` + 1 pixels (PIL's rectangle includes both corners) at a uniform position, always.

    Magnitudes: enhance factors 0.09 v + 0.05 (in [0.14, 0.86]: these only darken, blur, desaturate),
    Posterize int(0.4 v) + 4 bits, Solarize threshold 256 - int(25.6 v), Rotate int(3 v) degrees,
    Shear 0.03 v, Translate int(0.03 v * size) pixels, each geometric op with a random sign.
    Deviations from PIL's ops are those of this module's (see its docstring)."""
    B, _, H, W = x.shape
    if B == 0:
        return x
    kw = {"generator": gen, "device": gen.device}
    ops = torch.randint(len(POOL), (n, B), **kw).cpu()
    level = torch.randint(1, max(2, m), (n, B), **kw).cpu().double()
    applied = (torch.rand((n, B), **kw) < 0.5).cpu()
    sign = torch.where(torch.rand((n, B), **kw).cpu() < 0.5, -1.0, 1.0).double()
    mags = torch.zeros(n, B, dtype=torch.float64)
    for k, (name, *_rest) in enumerate(POOL):
        if name not in _MC:
            continue
        max_v, bias, integer, signed = _MC[name]
        sel = ops == k
        v = level * max_v / 10
        v = (v.floor() if integer else v) + bias
        if signed:
            v = v * sign
        if name.startswith("translate"):  # PIL translates by int(v * size) pixels
            size = W if name == "translate_x" else H
            v = (v * size).trunc() / size
        if name == "solarize":
            v = 256 - v
        mags[sel] = v[sel]
    ops = torch.where(applied, ops, 0)  # not applied: POOL[0], the identity
    x = apply_ops(x, ops, mags)
    # CutoutAbs: corner x0 = max(0, u - v/2), u ~ U(0, w); PIL's rectangle to x0 + v inclusive, i.e. v + 1
    # pixels from x0, clipped at the far border: cutout_box's square of side v + 1 whose centre is x0 + v // 2
    y0 = (torch.rand(B, **kw).cpu() * H - cutout_px / 2).clamp(min=0).floor().long()
    x0 = (torch.rand(B, **kw).cpu() * W - cutout_px / 2).clamp(min=0).floor().long()
    half = (cutout_px + 1) // 2
    return cutout_box(x, y0 + half, x0 + half, torch.full((B,), cutout_px + 1), fill=127)


def flip_translate(x: Tensor, flip: Tensor, ty: Tensor, tx: Tensor) -> Tensor:
    """out[b, :, i, j] = flipped x[b] at (reflect(i + ty[b]), reflect(j + tx[b])): a crop of the
    reflect-padded (optionally h-flipped) image, as one gather. |ty| < H, |tx| < W."""
    B, C, H, W = x.shape
    dev = x.device

    def reflect(i: Tensor, size: int) -> Tensor:  # torch/numpy 'reflect' (edge not repeated)
        i = i.abs()
        return torch.where(i >= size, 2 * (size - 1) - i, i)

    rows = reflect(torch.arange(H, device=dev) + ty.to(dev).view(B, 1), H)  # (B, H)
    cols = reflect(torch.arange(W, device=dev) + tx.to(dev).view(B, 1), W)  # (B, W)
    cols = torch.where(flip.to(dev).view(B, 1), W - 1 - cols, cols)
    idx = (rows.unsqueeze(2) * W + cols.unsqueeze(1)).view(B, 1, H * W)  # (B, 1, HW)
    return x.reshape(B, C, H * W).gather(2, idx.expand(B, C, H * W)).view(B, C, H, W)


def weak(x: Tensor, gen: torch.Generator, hflip: bool = True, pad: float = 0.125) -> Tensor:
    """Random h-flip (p = 0.5, if hflip), then reflect-pad by round(pad * H) px and random crop
    back to H x W (FixMatch: 4 px on 32 px). pad = 0 -> no translation."""
    B, C, H, W = x.shape
    ph, pw = round(pad * H), round(pad * W)
    if not (0 <= ph < H and 0 <= pw < W):
        raise ValueError(f"pad={pad} must give 0 <= pad pixels < image size for reflect padding")
    if not hflip and ph == pw == 0:
        return x
    kw = {"generator": gen, "device": gen.device}
    flip = torch.rand(B, **kw) < 0.5 if hflip else torch.zeros(B, dtype=torch.bool)
    ty = torch.randint(-ph, ph + 1, (B,), **kw)
    tx = torch.randint(-pw, pw + 1, (B,), **kw)
    return flip_translate(x, flip, ty, tx)


def cutout_box(x: Tensor, cy: Tensor, cx: Tensor, size: Tensor, fill: int = 127) -> Tensor:
    """Fill rows [cy - size//2, +size) x cols [cx - size//2, +size), clipped, with `fill`."""
    B, C, H, W = x.shape
    cy, cx, size = (t.to(x.device).long().view(B, 1) for t in (cy, cx, size))
    y0, x0 = cy - size // 2, cx - size // 2  # (B, 1)
    ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_y = ((ys >= y0) & (ys < y0 + size)).to(torch.uint8) * 255  # (B, H), 255 inside the box
    in_x = ((xs >= x0) & (xs < x0 + size)).to(torch.uint8) * 255  # (B, W)
    m = (in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1)  # (B, 1, H, W)
    # bit-select instead of masked_fill: ~5x faster on CPU for uint8 (vectorised bitwise ops)
    return (x & ~m) | (m & fill)


def cutout(x: Tensor, gen: torch.Generator, frac: float = 0.5, fill: int = 127) -> Tensor:
    """FixMatch cutout: one gray square of side round(v * H), v ~ U(0, frac), at a uniformly
    random pixel centre, clipped at the borders."""
    B, C, H, W = x.shape
    kw = {"generator": gen, "device": gen.device}
    size = (torch.rand(B, **kw) * frac * min(H, W)).round()
    cy, cx = torch.randint(0, H, (B,), **kw), torch.randint(0, W, (B,), **kw)
    return cutout_box(x, cy, cx, size, fill)


def strong(x: Tensor, gen: torch.Generator, hflip: bool = True, pad: float = 0.125, n: int = 2,
           cutout_frac: float = 0.5) -> Tensor:
    """FixMatch's strong view: weak, then RandAugment, then cutout."""
    return cutout(randaugment(weak(x, gen, hflip, pad), gen, n), gen, cutout_frac)


def to_float(x: Tensor, mean: tuple, std: tuple, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (B, C, H, W) -> (x / 255 - mean) / std per channel, as one cast + one addcmul."""
    C = x.shape[1]
    if len(mean) not in (1, C) or len(std) not in (1, C):
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {C} channels")
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = (1 / (255 * s)).to(x.device, dtype), (-m / s).to(x.device, dtype)
    return torch.addcmul(shift, x.to(dtype), scale)  # (B, C, H, W)


VIEWS = ("none", "crop", "flip_crop", "randaugment", "randaugment_mc")


def make_view(name: str, *, hflip: bool, pad: float, n: int,
              cutout_frac: float) -> Callable[[Tensor, torch.Generator], Tensor]:
    """View name -> f(x, gen). none: identity; crop: weak without flip; flip_crop: weak;
    randaugment: strong (weak + RandAugment + cutout); randaugment_mc: weak + RandAugmentMC(n, 10), whose
    fixed 16-px cutout is part of it (cutout_frac unused)."""
    if name == "none":
        return lambda x, gen: x
    if name == "crop":
        return partial(weak, hflip=False, pad=pad)
    if name == "flip_crop":
        return partial(weak, hflip=hflip, pad=pad)
    if name == "randaugment":
        return partial(strong, hflip=hflip, pad=pad, n=n, cutout_frac=cutout_frac)
    if name == "randaugment_mc":
        return lambda x, gen: randaugment_mc(weak(x, gen, hflip, pad), gen, n)
    raise ConfigError(f"unknown view {name!r}; expected one of {', '.join(VIEWS)}")

