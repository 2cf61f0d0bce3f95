"""CTAugment (Berthelot et al., ReMixMatch, ICLR 2020, sec. 3.2.2), batched over uint8 (B, C, H, W).

Each op's magnitude range [0, 1] is split into ``num_bins`` bins with weights (initially 1). A policy
draws ``depth`` ops uniformly; for each, a bin with probability proportional to its weight after
p = (w + (1 - decay)) / max(w + (1 - decay)) and zeroing p < ``threshold`` (both reference codes
normalise by the op's best bin before thresholding, so at least one bin always stays usable), then a
magnitude uniformly inside the bin. Weights are learnt from *probe* images: labelled images augmented
with uniformly random policies; with the model's prediction p on a probe of label y,

    omega = 1 - 1/2 * sum_k |p_k - onehot(y)_k|           (in [0, 1]; the reference's train_step)
    w[op, bin] <- decay * w[op, bin] + (1 - decay) * omega  for each (op, bin) of its policy.

Defaults: 17 bins, decay 0.99, threshold 0.8, depth 2 (the reference's flags adepth/adecay/ath; the
CTAugment class default th = 0.85 is overridden by ath = 0.80). ``forward`` (the strong view) applies a
learnt policy, then, with ``cutout=True``, the pool's cutout op at level 1 (a gray square of side
1 + int(0.499 min(H, W)): 16 px on 32 px, at a uniform position), as FixMatch's reference appends to its
CTA strong views (``cta.policy(probe=False) + [OP('cutout', (1,))]``); ReMixMatch's reference appends none
(cutout is then only one of the ops a policy may draw). Callers apply the weak flip-and-crop before it, to
the strong views and to the probes alike: the reference probes weakly augmented labelled images.

Op pool and magnitude maps, level in [0, 1), after the reference libml/ctaugment.py (FixMatch's copy):
autocontrast, equalize, invert, blur, smooth: blend(x, op(x), level); brightness, color, contrast,
sharpness: factor 0.1 + 1.9 level; posterize: 1 + int(7.999 level) bits; solarize: threshold
int(255.999 level); rotate: round((2 level - 1) 45) degrees; shear_x/y: (2 level - 1) 0.3; translate_x/y:
(2 level - 1) 0.3 of the image size; rescale: crop 0.25 level of each side and resize back; cutout: a
gray square of side 1 + int(0.499 level min(H, W)); identity. Deviations: translate is a fraction of the
size (the reference's PIL affine offset is (2 level - 1) 0.3 *pixels*, a near no-op); rescale always
uses nearest resampling (the reference's second parameter picks one of 6 PIL filters; one bin per op
keeps the (op, bin) policy); every op, identity included, has ``num_bins`` bins (the reference gives
identity none and posterize 8); bins follow FixMatch's copy (ReMixMatch's samples between bin edges).
Geometric ops fill with gray 128 and sample nearest, as semisup.data.transforms.

Updates are sequential-equivalent: a bin hit n times in one ``update`` call ends exactly where n
one-sample updates in batch order (sample-major, then depth) would, as the reference's Python loop.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import transforms as T


def _mix(x: Tensor, y: Tensor, level: Tensor) -> Tensor:
    """PIL Image.blend(x, y, level) = trunc(x + level * (y - x)). level (B,) -> uint8 (B, C, H, W)."""
    lv = level.to(x.device, torch.float32).view(-1, 1, 1, 1)
    xf = x.float()
    return (xf + lv * (y.float() - xf)).clamp_(0, 255).to(torch.uint8)


def _blur_img(x: Tensor) -> Tensor:
    """PIL ImageFilter.BLUR (5x5 ring of ones / 16), rounded; the 2-pixel border is copied."""
    if x.shape[2] < 5 or x.shape[3] < 5:
        return x
    xf = x.float()
    r5 = xf[:, :, :-4] + xf[:, :, 1:-3] + xf[:, :, 2:-2] + xf[:, :, 3:-1] + xf[:, :, 4:]  # (B, C, H-4, W)
    box5 = r5[..., :-4] + r5[..., 1:-3] + r5[..., 2:-2] + r5[..., 3:-1] + r5[..., 4:]  # (B, C, H-4, W-4)
    c = xf[:, :, 1:-1, 1:-1]
    r3 = c[:, :, :-2] + c[:, :, 1:-1] + c[:, :, 2:]  # (B, C, H-4, W-2)
    box3 = r3[..., :-2] + r3[..., 1:-1] + r3[..., 2:]  # (B, C, H-4, W-4)
    out = x.clone()
    out[:, :, 2:-2, 2:-2] = ((box5 - box3) / 16).round_().to(torch.uint8)
    return out


def _cutout(x: Tensor, level: Tensor, loc: Tensor) -> Tensor:
    """Gray square of side 1 + int(0.499 level min(H, W)) centred at loc (B, 2) in [0, 1) x (H, W)."""
    H, W = x.shape[2:]
    size = 1 + (level * 0.499 * min(H, W)).long()
    return T.cutout_box(x, (loc[:, 0] * H).long(), (loc[:, 1] * W).long(), size)


def _rescale_m(level: Tensor, h: int, w: int) -> Tensor:
    """Crop s = 0.25 level of each side and resize back: src = s * size + (1 - 2 s) * dst. -> (B, 2, 3)."""
    s = 0.25 * level.float()
    m = torch.zeros(len(level), 2, 3)
    m[:, 0, 0] = m[:, 1, 1] = 1 - 2 * s
    m[:, 0, 2], m[:, 1, 2] = s * w, s * h
    return m


def _sym(level: Tensor, scale: float) -> Tensor:
    return (2 * level - 1) * scale


# (name, fn(x, level (n,), loc (n, 2)) -> uint8) for pixel ops; geometric ops build (n, 2, 3) matrices.
PIXEL_OPS: tuple[tuple[str, Callable], ...] = (
    ("identity", lambda x, v, loc: x),
    ("autocontrast", lambda x, v, loc: _mix(x, T.auto_contrast(x), v)),
    ("equalize", lambda x, v, loc: _mix(x, T.equalize(x), v)),
    ("invert", lambda x, v, loc: _mix(x, 255 - x, v)),
    ("blur", lambda x, v, loc: _mix(x, _blur_img(x), v)),
    ("smooth", lambda x, v, loc: _mix(x, T.sharpness(x, 0.0), v)),  # sharpness(0) = the SMOOTH image
    ("brightness", lambda x, v, loc: T.brightness(x, 0.1 + 1.9 * v)),
    ("color", lambda x, v, loc: T.color(x, 0.1 + 1.9 * v)),
    ("contrast", lambda x, v, loc: T.contrast(x, 0.1 + 1.9 * v)),
    ("sharpness", lambda x, v, loc: T.sharpness(x, 0.1 + 1.9 * v)),
    ("posterize", lambda x, v, loc: T.posterize(x, 1 + (v * 7.999).floor())),
    ("solarize", lambda x, v, loc: T.solarize(x, (v * 255.999).floor())),
    ("cutout", _cutout),
)
# transforms' matrix builders (its _GEO table) let all geometric ops of a layer share one warp() gather
GEO_OPS: tuple[tuple[str, Callable], ...] = (  # (name, matrix(level (n,), H, W) -> (n, 2, 3))
    ("rotate", lambda v, h, w: T._GEO["rotate"](torch.round(_sym(v, 45.0)), h, w)),
    ("shear_x", lambda v, h, w: T._GEO["shear_x"](_sym(v, 0.3), h, w)),
    ("shear_y", lambda v, h, w: T._GEO["shear_y"](_sym(v, 0.3), h, w)),
    ("translate_x", lambda v, h, w: T._GEO["translate_x"](_sym(v, 0.3), h, w)),
    ("translate_y", lambda v, h, w: T._GEO["translate_y"](_sym(v, 0.3), h, w)),
    ("rescale", _rescale_m),
)
OP_NAMES = tuple(n for n, _ in PIXEL_OPS + GEO_OPS)  # geometric ops last: one warp() per layer


def apply_ops(x: Tensor, ops: Tensor, levels: Tensor, loc: Tensor) -> Tensor:
    """Apply per-sample op sequences. x uint8 (B, C, H, W); ops (B, depth) int64 indices into OP_NAMES;
    levels (B, depth) in [0, 1); loc (B, depth, 2) in [0, 1) (cutout centres). CPU parameter tensors."""
    B = x.shape[0]
    if B == 0:
        return x
    n_pix = len(PIXEL_OPS)
    for d in range(ops.shape[1]):
        # sort the batch by op so each op sees one contiguous slice (a loop over ops, not samples)
        order = torch.argsort(ops[:, d], stable=True)  # (B,)
        op, lv, lc = ops[order, d], levels[order, d], loc[order, d]  # (B,), (B,), (B, 2)
        starts = [0, *torch.bincount(op, minlength=len(OP_NAMES)).cumsum(0).tolist()]
        order_d = order.to(x.device)
        xs = x.index_select(0, order_d)  # (B, C, H, W) sorted by op
        outs = [PIXEL_OPS[k][1](xs[starts[k]:starts[k + 1]], lv[starts[k]:starts[k + 1]], lc[starts[k]:starts[k + 1]])
                for k in range(n_pix) if starts[k + 1] > starts[k]]
        g0 = starts[n_pix]
        if g0 < B:  # all geometric ops of this layer in one gather with per-sample matrices
            mats = [GEO_OPS[k - n_pix][1](lv[starts[k]:starts[k + 1]], *x.shape[2:])
                    for k in range(n_pix, len(OP_NAMES)) if starts[k + 1] > starts[k]]
            outs.append(T.warp(xs[g0:], torch.cat(mats)))
        x = torch.cat(outs).index_select(0, torch.argsort(order_d))  # back to input order
    return x


class CTAugment(nn.Module):
    """Learnt strong augmentation. ``weights`` (num_ops, num_bins) is a buffer: checkpointed by
    state_dict(). forward/probe draw all randomness from ``gen``; update() is deterministic."""

    def __init__(self, num_bins: int = 17, decay: float = 0.99, threshold: float = 0.8, depth: int = 2,
                 cutout: bool = True):
        super().__init__()
        if num_bins < 1 or depth < 0 or not 0 <= decay < 1 or not 0 <= threshold <= 1:
            raise ValueError(f"CTAugment: bad arguments num_bins={num_bins} depth={depth} decay={decay} "
                             f"threshold={threshold} cutout={cutout}")
        self.num_bins, self.decay, self.threshold, self.depth, self.cutout = num_bins, decay, threshold, depth, cutout
        self.register_buffer("weights", torch.ones(len(OP_NAMES), num_bins))

    def bin_probs(self) -> Tensor:
        """Sampling probabilities (num_ops, num_bins) of each op's bins (rows sum to 1)."""
        p = self.weights.detach().float().cpu() + (1 - self.decay)  # the reference's floor, avoids all-zero
        p = p / p.amax(1, keepdim=True)
        p = torch.where(p < self.threshold, 0.0, p)
        return p / p.sum(1, keepdim=True)

    def _draw(self, B: int, gen: torch.Generator, learnt: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        kw = {"generator": gen, "device": gen.device}
        ops = torch.randint(len(OP_NAMES), (B, self.depth), **kw).cpu()  # (B, depth) uniform ops
        u_bin = torch.rand((B, self.depth), **kw).cpu()
        u_in = torch.rand((B, self.depth), **kw).cpu()  # position inside the bin
        loc = torch.rand((B, self.depth, 2), **kw).cpu()
        if learnt:  # inverse-CDF sampling: zero-probability bins have zero width, so are never hit
            cdf = self.bin_probs()[ops].cumsum(-1)  # (B, depth, num_bins)
            bins = torch.searchsorted(cdf, (u_bin * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
            bins = bins.clamp_(max=self.num_bins - 1)
            levels = (bins + u_in) / self.num_bins
        else:  # probe: uniform magnitude, recorded as the bin that holds it
            levels = u_bin
            bins = (levels * self.num_bins).long().clamp_(max=self.num_bins - 1)
        return ops, bins, levels.clamp_(max=1 - 1e-6), loc

    def forward(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Strong view: a learnt policy, then (cutout=True) the cutout op at level 1. x uint8 (B, C, H, W)."""
        B = x.shape[0]
        ops, _, levels, loc = self._draw(B, gen, learnt=True)
        x = apply_ops(x, ops, levels, loc)
        if not self.cutout:
            return x
        where = torch.rand((B, 2), generator=gen, device=gen.device).cpu()
        return _cutout(x, torch.ones(B), where)

    def probe(self, x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Uniformly random policy, no cutout -> (uint8 (B, C, H, W), policy (B, depth, 2) int64 of
        (op index, bin)). Feed the model's softmax on the result to update()."""
        ops, bins, levels, loc = self._draw(x.shape[0], gen, learnt=False)
        return apply_ops(x, ops, levels, loc), torch.stack([ops, bins], -1)

    @torch.no_grad()
    def update(self, policy: Tensor, probs: Tensor, labels: Tensor) -> None:
        """policy (B, depth, 2) from probe(); probs (B, K) the model's softmax on the probes (the reference
        uses its EMA model in eval mode); labels (B,). Sequential-equivalent EMA of each used bin."""
        w = self.weights.view(-1)  # (num_ops * num_bins,) view: updated in place
        probs = probs.detach().float().to(w.device)
        err = probs.clone()
        err[torch.arange(len(err), device=w.device), labels.to(w.device)] -= 1
        omega = 1 - 0.5 * err.abs().sum(1)  # (B,)
        policy = policy.to(w.device)
        f = (policy[..., 0] * self.num_bins + policy[..., 1]).reshape(-1)  # (B depth,) flat bin, batch order
        om = omega.repeat_interleave(policy.shape[1])  # (B depth,)
        counts = torch.bincount(f, minlength=w.numel())  # hits per bin
        order = torch.argsort(f, stable=True)
        first = counts.cumsum(0) - counts  # index of each bin's first hit in sorted order
        rank = torch.empty_like(f)
        rank[order] = torch.arange(len(f), device=w.device) - first[f[order]]  # hit number within its bin
        later = counts[f] - 1 - rank  # hits of the same bin after this one
        rho = torch.tensor(self.decay, dtype=torch.float64, device=w.device)
        add = torch.zeros(w.numel(), dtype=torch.float64, device=w.device)
        add.index_add_(0, f, (1 - rho) * rho.pow(later) * om.double())
        w.copy_((w.double() * rho.pow(counts) + add).to(w.dtype))

    def extra_repr(self) -> str:
        return (f"num_bins={self.num_bins}, decay={self.decay}, threshold={self.threshold}, depth={self.depth}, "
                f"cutout={self.cutout}")
