"""Batched augmentation vs slow per-image references (PIL for the pixel ops, plain loops otherwise)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from semisup.data import transforms as T
from semisup.errors import ConfigError


def images(b=6, c=3, s=32, lo=0, hi=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (b, c, s, s), dtype=torch.uint8, generator=g)  # (B, C, H, W)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def to_pil(img):  # (C, H, W) uint8 -> PIL 'L' or 'RGB'
    a = img.numpy()
    return Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")


def from_pil(im):
    a = np.asarray(im)
    return torch.from_numpy((a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).copy())


def pil_batch(x, fn):
    return torch.stack([from_pil(fn(to_pil(img))) for img in x])


def maxdiff(a, b):
    return (a.int() - b.int()).abs().max().item()


# ---- each op against PIL --------------------------------------------------------------------------
# Enhance ops: PIL blends in float and truncates; we do the same in float32 -> allow 1 level.
ENHANCE = [(T.brightness, ImageEnhance.Brightness), (T.color, ImageEnhance.Color),
           (T.contrast, ImageEnhance.Contrast), (T.sharpness, ImageEnhance.Sharpness)]


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("op,pil", ENHANCE, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("f", [0.0, 0.19, 0.5, 1.0, 1.37, 1.81])
def test_enhance_matches_pil(op, pil, f, c):
    x = torch.cat([images(c=c, s=28), images(b=2, c=c, s=28, lo=90, hi=140, seed=1)])
    ref = pil_batch(x, lambda im: pil(im).enhance(f))
    got = op(x, torch.full((len(x),), f))
    assert got.dtype == torch.uint8 and got.shape == x.shape
    assert maxdiff(got, ref) <= 1
    assert (got != ref).float().mean() < 0.01  # off-by-one only at rare float ties


LUT_CASES = [  # (name, op, PIL reference, magnitudes): exact integer semantics, must match PIL exactly
    ("auto_contrast", lambda x, v: T.auto_contrast(x), lambda im, v: ImageOps.autocontrast(im), [0]),
    ("equalize", lambda x, v: T.equalize(x), lambda im, v: ImageOps.equalize(im), [0]),
    ("posterize", T.posterize, lambda im, v: ImageOps.posterize(im, int(v)), [1, 4, 5, 6, 7, 8]),
    ("solarize", T.solarize, lambda im, v: ImageOps.solarize(im, v), [0, 1, 77, 128, 200, 255, 256]),
]
LUT = [(n, op, pil, v) for n, op, pil, vs in LUT_CASES for v in vs]


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name,op,pil,v", LUT, ids=[f"{n}-{v}" for n, _, _, v in LUT])
def test_lut_ops_match_pil_exactly(name, op, pil, v, c):
    flat = torch.full((1, c, 32, 32), 77, dtype=torch.uint8)
    x = torch.cat([images(c=c), images(b=3, c=c, lo=40, hi=170, seed=2), flat])
    ref = pil_batch(x, lambda im: pil(im, v))
    assert torch.equal(op(x, torch.full((len(x),), float(v))), ref)


GEO = [("rotate", T.rotate, [-30.0, -7.5, 13.7, 30.0]), ("shear_x", T.shear_x, [-0.3, 0.11, 0.3]),
       ("shear_y", T.shear_y, [-0.3, 0.11, 0.3]), ("translate_x", T.translate_x, [-0.3, 0.07, 0.3]),
       ("translate_y", T.translate_y, [-0.3, 0.07, 0.3])]


def pil_geo(name, im, v):
    fill = 128 if im.mode == "L" else (128,) * 3
    if name == "rotate":
        return im.rotate(v, fillcolor=fill)
    w, h = im.size
    m = {"shear_x": (1, v, 0, 0, 1, 0), "shear_y": (1, 0, 0, v, 1, 0),
         "translate_x": (1, 0, v * w, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, v * h)}[name]
    return im.transform(im.size, Image.AFFINE, m, fillcolor=fill)


@pytest.mark.parametrize("c,s", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name,op,vals", GEO, ids=[g[0] for g in GEO])
def test_geometric_matches_pil(name, op, vals, c, s):
    x = images(b=len(vals), c=c, s=s)
    ref = torch.stack([from_pil(pil_geo(name, to_pil(img), v)) for img, v in zip(x, vals)])
    got = op(x, torch.tensor(vals))  # per-sample magnitudes in one call
    # nearest sampling: float32 vs double source coordinates may pick a neighbour at exact ties
    assert (got != ref).float().mean() < 0.005


# ---- properties -----------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [1, 3])
def test_identity_and_constant_images(c):
    x = images(c=c)
    assert torch.equal(T.identity(x, torch.zeros(len(x))), x)
    const = torch.arange(6, dtype=torch.uint8).mul(40).view(6, 1, 1, 1).expand(6, c, 28, 28).contiguous()
    for name, op, lo, hi in T.POOL[: T._N_COLOUR]:
        out = op(const, torch.full((6,), (lo + hi) / 2))
        assert (out == out[:, :, :1, :1]).all(), f"{name} made a constant image non-constant"
    for op in (T.auto_contrast, T.equalize, T.color, T.contrast, T.sharpness):  # degenerate = image
        assert torch.equal(op(const, torch.full((6,), 1.6)), const)


def test_color_is_identity_for_gray():
    x = images(c=1)
    assert torch.equal(T.color(x, torch.full((6,), 0.2)), x)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("s", [28, 32])
@pytest.mark.parametrize("view", T.VIEWS)
def test_views_shape_dtype_determinism(view, c, s):
    x = images(b=20, c=c, s=s)
    f = T.make_view(view, hflip=True, pad=0.125, n=2, cutout_frac=0.5)
    a, b, other = f(x, gen(1)), f(x, gen(1)), f(x, gen(2))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert torch.equal(a, x) if view == "none" else not torch.equal(a, other)


@pytest.mark.parametrize("c,s", [(1, 28), (3, 32)])
def test_every_pool_op_preserves_shape(c, s):
    x = images(c=c, s=s)
    for name, op, lo, hi in T.POOL:
        out = op(x, lo + (hi - lo) * torch.rand(len(x), generator=gen()))
        assert out.shape == x.shape and out.dtype == torch.uint8, name


def test_randaugment_equals_per_image_reference():
    x = images(b=64, c=3)
    got = T.randaugment(x, gen(5), n=3)
    g = gen(5)  # replay the same draws, then apply the ops image by image
    ops = torch.randint(len(T.POOL), (3, 64), generator=g)
    u = torch.rand((3, 64), generator=g)
    ref = x.clone()
    for i in range(64):
        for r in range(3):
            _, op, lo, hi = T.POOL[ops[r, i]]
            ref[i : i + 1] = op(ref[i : i + 1], torch.tensor([lo + (hi - lo) * u[r, i].item()]))
    assert maxdiff(got, ref) <= 1 and (got != ref).float().mean() < 1e-3
    assert len(set(ops.flatten().tolist())) == len(T.POOL)  # every op was exercised


def test_randaugment_n0_and_magnitude_ranges():
    x = images()
    assert torch.equal(T.randaugment(x, gen(), n=0), x)
    r = {name: (lo, hi) for name, _, lo, hi in T.POOL}
    assert r["brightness"] == pytest.approx((0.19, 1.81)) and r["rotate"] == (-30.0, 30.0)
    assert r["posterize"] == (4.0, 9.0) and r["solarize"] == (0.0, 256.0) and len(T.POOL) == 14


def test_posterize_magnitude_floors_to_bits_4_to_8():
    x = images()
    assert torch.equal(T.posterize(x, torch.full((6,), 8.99)), x)
    assert torch.equal(T.posterize(x, torch.full((6,), 4.7)), x & 0xF0)
    assert torch.equal(T.posterize(x, torch.tensor([4.0, 5.0, 6.0, 7.0, 8.0, 5.9])),
                       x & torch.tensor([0xF0, 0xF8, 0xFC, 0xFE, 0xFF, 0xF8], dtype=torch.uint8).view(6, 1, 1, 1))


# ---- weak -----------------------------------------------------------------------------------------
def test_weak_identity_and_flip():
    x = images(b=40)
    assert torch.equal(T.weak(x, gen(), hflip=False, pad=0.0), x)
    y = T.weak(x, gen(), hflip=True, pad=0.0)
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and same.any() and flipped.any()
    with pytest.raises(ValueError, match="pad"):
        T.weak(x, gen(), pad=1.0)  # reflect padding needs pad < size


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("c,s", [(1, 28), (3, 32)])
def test_weak_is_a_crop_of_the_reflect_padded_image(hflip, c, s):
    x = images(b=12, c=c, s=s)
    y = T.weak(x, gen(3), hflip=hflip, pad=0.125)
    p = round(0.125 * s)
    shifted = 0
    for img, out in zip(x, y):
        cands = [img, img.flip(-1)] if hflip else [img]
        padded = [F.pad(v[None].float(), (p,) * 4, mode="reflect")[0].to(torch.uint8) for v in cands]
        hits = [(dy, dx) for v in padded for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(v[:, dy : dy + s, dx : dx + s], out)]
        assert hits, "output is not a crop of the reflect-padded image"
        shifted += (p, p) not in hits
    assert shifted > 0


def test_flip_translate_known_params():
    x = images(b=3, c=1, s=8)
    flip, ty, tx = torch.tensor([False, True, True]), torch.tensor([0, -3, 2]), torch.tensor([1, 0, -2])
    y = T.flip_translate(x, flip, ty, tx)
    for i in range(3):
        v = x[i].flip(-1) if flip[i] else x[i]
        pad = F.pad(v[None].float(), (3,) * 4, mode="reflect")[0].to(torch.uint8)
        assert torch.equal(y[i], pad[:, 3 + ty[i] : 3 + ty[i] + 8, 3 + tx[i] : 3 + tx[i] + 8])


# ---- cutout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("c,s", [(1, 28), (3, 32)])
def test_cutout_one_clipped_square(c, s):
    x = images(b=200, c=c, s=s, hi=100)  # no 127 in the input, so changed pixels = the box
    y = T.cutout(x, gen(4), frac=0.5)
    changed = y != x  # (B, C, H, W)
    assert (changed == changed[:, :1]).all() and (y[changed] == 127).all()
    m = changed[:, 0]
    sides = []
    for box in m:
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        if len(rows) == 0:
            continue
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w  # contiguous
        assert box.sum() == h * w  # a full rectangle
        assert max(h, w) <= round(0.5 * s)
        if 0 < rows[0] and rows[-1] < s - 1 and 0 < cols[0] and cols[-1] < s - 1:
            assert h == w  # unclipped -> square
        sides.append(max(h, w))
    assert len(sides) > 150 and max(sides) >= round(0.5 * s) - 2


def test_cutout_box_clips_at_border():
    x = torch.zeros(2, 1, 10, 10, dtype=torch.uint8)
    y = T.cutout_box(x, torch.tensor([5, 0]), torch.tensor([5, 9]), torch.tensor([4, 4]), fill=127)
    assert torch.equal(y[0, 0, 3:7, 3:7], torch.full((4, 4), 127, dtype=torch.uint8)) and y[0].sum() == 16 * 127
    assert y[1, 0, 0:2, 7:10].eq(127).all() and y[1].sum() == 6 * 127


# ---- strong / to_float / make_view / device ---------------------------------------------------------
def test_strong_is_weak_then_randaugment_then_cutout():
    x = images(b=16)
    g = gen(9)
    ref = T.cutout(T.randaugment(T.weak(x, g), g), g)
    assert torch.equal(T.strong(x, gen(9)), ref)
    assert torch.equal(T.make_view("randaugment", hflip=True, pad=0.125, n=2, cutout_frac=0.5)(x, gen(9)), ref)


def test_make_view_crop_never_flips_and_unknown_fails():
    x = images(b=30)
    assert torch.equal(T.make_view("crop", hflip=True, pad=0.0, n=2, cutout_frac=0.5)(x, gen()), x)
    with pytest.raises(ConfigError, match="unknown view"):
        T.make_view("mixup", hflip=True, pad=0.125, n=2, cutout_frac=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_float(dtype):
    x = images(b=4)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    m, sd = torch.tensor(mean).double().view(1, 3, 1, 1), torch.tensor(std).double().view(1, 3, 1, 1)
    ref = (x.double() / 255 - m) / sd
    out = T.to_float(x, mean, std, dtype)
    assert out.dtype == dtype and torch.allclose(out.double(), ref, atol=1e-5)
    assert torch.allclose(T.to_float(images(c=1), (0.5,), (0.5,)), images(c=1).float() / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError):
        T.to_float(images(c=1), mean, std)


@pytest.mark.cuda
def test_device_agnostic():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    x = images(b=64)
    outs = [T.strong(x.to(d), gen(11)).cpu() for d in devices]  # CPU generator, batch on device
    for o in outs[1:]:
        assert maxdiff(o, outs[0]) <= 1 and (o != outs[0]).float().mean() < 1e-3


def _mc_reference(img: Image.Image, ops, levels, applied, signs, cy, cx):
    """kekmodel's RandAugmentMC on one PIL image, restated slowly, with the draws given."""
    names = [p[0] for p in T.POOL]
    w, h = img.size
    for k, v, on, sg in zip(ops, levels, applied, signs):
        if not on:
            continue
        name, s = names[k], (-1 if sg else 1)
        if name == "auto_contrast":
            img = ImageOps.autocontrast(img)
        elif name == "equalize":
            img = ImageOps.equalize(img)
        elif name in ("brightness", "color", "contrast", "sharpness"):
            cls = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
                   "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}[name]
            img = cls(img).enhance(float(v) * 0.9 / 10 + 0.05)
        elif name == "posterize":
            img = ImageOps.posterize(img, int(v * 4 / 10) + 4)
        elif name == "solarize":
            img = ImageOps.solarize(img, 256 - int(v * 256 / 10))
        elif name == "rotate":
            img = img.rotate(s * int(v * 30 / 10))
        elif name == "shear_x":
            img = img.transform(img.size, Image.AFFINE, (1, s * float(v) * 0.3 / 10, 0, 0, 1, 0))
        elif name == "shear_y":
            img = img.transform(img.size, Image.AFFINE, (1, 0, 0, s * float(v) * 0.3 / 10, 1, 0))
        elif name == "translate_x":
            img = img.transform(img.size, Image.AFFINE, (1, 0, int(s * float(v) * 0.3 / 10 * w), 0, 1, 0))
        elif name == "translate_y":
            img = img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, int(s * float(v) * 0.3 / 10 * h)))
    x0, y0 = int(max(0, cx - 8)), int(max(0, cy - 8))  # CutoutAbs(img, 16)
    img = img.copy()
    from PIL import ImageDraw
    ImageDraw.Draw(img).rectangle((x0, y0, int(min(w, x0 + 16)), int(min(h, y0 + 16))), (127, 127, 127))
    return img


def test_randaugment_mc_matches_kekmodels_ops_with_the_same_draws():
    x = images(b=48, seed=3)
    out = T.randaugment_mc(x, gen(5), n=2, m=10)
    g = gen(5)  # the draws randaugment_mc makes, in its order
    ops = torch.randint(len(T.POOL), (2, 48), generator=g)
    levels = torch.randint(1, 10, (2, 48), generator=g)
    applied = torch.rand((2, 48), generator=g) < 0.5
    signs = torch.rand((2, 48), generator=g) < 0.5
    cy, cx = torch.rand(48, generator=g) * 32, torch.rand(48, generator=g) * 32
    assert levels.min() >= 1 and levels.max() <= 9 and 0.2 < applied.float().mean() < 0.8
    geo = {k for k, p in enumerate(T.POOL) if p[0] in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")}
    strict = lenient = 0
    for b in range(48):
        pil = Image.fromarray(x[b].permute(1, 2, 0).numpy())
        ref = _mc_reference(pil, ops[:, b].tolist(), levels[:, b].tolist(), applied[:, b].tolist(),
                            signs[:, b].tolist(), float(cy[b]), float(cx[b]))
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
        kinds = [int(k) in geo for k, a in zip(ops[:, b], applied[:, b]) if a and T.POOL[int(k)][0] != "identity"]
        if not any(kinds):  # colour ops only: PIL's arithmetic, up to one level at ties
            diff = (out[b].int() - ref.int()).abs()
            assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, (b, ops[:, b], levels[:, b])
            strict += 1
        elif kinds[-1] and kinds.count(False) == 0:  # geometric ops only: the fills differ (gray 128 here,
            keep = (out[b] != T.GEO_FILL) & (ref != 0)  # black in PIL), and float32 moves a source pixel
            assert ((out[b].int() - ref.int()).abs()[keep] > 1).float().mean() < 0.05, b  # at exact ties
            lenient += 1
    assert strict >= 15 and lenient >= 5, (strict, lenient)


def test_randaugment_mc_cutout_is_17_pixels_clipped_at_the_borders():
    x = torch.full((200, 3, 32, 32), 200, dtype=torch.uint8)
    out = T.randaugment_mc(x, gen(1), n=0)  # no ops: the cutout alone
    gray = out[:, 0] == 127
    rows, cols = gray.any(2).sum(1), gray.any(1).sum(1)
    assert rows.max() == 17 and cols.max() == 17 and rows.min() >= 8 and cols.min() >= 8
    assert (gray.sum((1, 2)) == rows * cols).all()  # one rectangle per image
    view = T.make_view("randaugment_mc", hflip=True, pad=0.125, n=2, cutout_frac=0.5)
    assert view(x, gen(2)).shape == x.shape
