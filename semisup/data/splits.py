"""Pure, seeded splits of a train set into labelled / unlabelled / validation indices.

No globals, no files: the same ``(targets, counts, seed)`` always give the same split. Classes are
visited in order 0..K-1; each class's train indices get one permutation from
``numpy.random.default_rng(seed)``, cut into **val first, then labelled, then unlabelled**. Hence
adding a val hold-out is explicit (it changes which images are labelled), and with the same seed
and val size a smaller labelled set is a subset of a larger one (it is a prefix of the same cut).

``include_labelled=True`` puts the labelled images into the unlabelled set too (FixMatch / USB);
for a balanced split, whose unlabelled part is all the rest, that is every train index not in val.
Long-tail counts follow ``N_k = int(N1 * gamma ** (-(k - 1) / (K - 1)))`` (DASO, ABC, ACR).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError, DataError

PARTS = ("labelled", "unlabelled", "val")


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array comparison has no truth value
class Split:
    labelled: np.ndarray  # (L,) int64 indices into the train set, sorted ascending
    unlabelled: np.ndarray  # (U,) int64, sorted; holds the labelled ones too when include_labelled
    val: np.ndarray  # (V,) int64, sorted; disjoint from labelled and unlabelled

    def manifest(self, targets: np.ndarray, seed: int, num_classes: int) -> dict:
        """JSON-able record: seed, per-class counts of each part, and the index lists."""
        t = np.asarray(targets)
        return {
            "seed": int(seed),
            "num_classes": int(num_classes),
            "counts": {p: np.bincount(t[getattr(self, p)], minlength=num_classes).tolist() for p in PARTS},
            **{p: getattr(self, p).tolist() for p in PARTS},
        }


def _check_gamma(name: str, gamma: float) -> None:
    if not (math.isfinite(gamma) and gamma >= 1):
        raise DataError(f"{name}={gamma} must be a finite ratio >= 1 (head count / tail count; 1 = balanced); "
                        "to put the tail classes first use unlabelled_dist=reversed")


def long_tail_counts(n_max: float, gamma: float, num_classes: int) -> list[int]:
    """``N_k = int(n_max * gamma ** (-(k - 1) / (K - 1)))`` for k = 1..K: head class first. Computed as the
    reference codes do (DARP's / DASO's / ABC's ``make_imb_data``): int(n_max * mu ** i) with
    mu = (1 / gamma) ** (1 / (K - 1)), and the tail int(n_max / gamma), so float rounding cannot move a count."""
    _check_gamma("gamma", gamma)
    if num_classes == 1:
        return [int(n_max)]
    mu = (1.0 / gamma) ** (1.0 / (num_classes - 1))
    return [int(n_max * mu ** i) for i in range(num_classes - 1)] + [int(n_max / gamma)]


def _unlabelled_counts(m1: int, gamma_u: float, num_classes: int, dist: str) -> list[int]:
    _check_gamma("gamma_u", gamma_u)
    if dist == "consistent":  # same head -> tail order as the labelled set
        return long_tail_counts(m1, gamma_u, num_classes)
    if dist == "uniform":
        return [int(m1)] * num_classes
    if dist == "reversed":  # tail classes of the labelled set are the head of the unlabelled set
        return long_tail_counts(m1, gamma_u, num_classes)[::-1]
    raise ConfigError(f"unlabelled_dist={dist!r}; choose consistent, uniform or reversed")


def _ratio_counts(n1: int, gamma: float, label_ratio: float, num_classes: int) -> tuple[list[int], list[int]]:
    """ABC's label-ratio form (also the ARL paper's): labelled N_k from (n1, gamma); the unlabelled head
    M_1 = (100 - beta) / beta * n1, long-tailed with the same gamma (ABC: make_imb_data((100 - label_ratio) /
    label_ratio * num_max, ...)). So M_k is 4 N_k at beta = 20 up to the rounding of each count
    (gamma 100, N1 1000: N_8 = 27, M_8 = 111)."""
    if not 0 < label_ratio <= 100:
        raise DataError(f"label_ratio={label_ratio} must be a percentage in (0, 100]")
    m1 = (100 - label_ratio) / label_ratio * n1
    return long_tail_counts(n1, gamma, num_classes), long_tail_counts(m1, gamma, num_classes)


def _check_targets(targets, num_classes: int) -> np.ndarray:
    t = np.asarray(targets)
    if num_classes < 1:
        raise DataError(f"num_classes={num_classes}; a split needs at least one class")
    if t.ndim != 1 or t.dtype.kind not in "iu":
        raise DataError(f"targets must be a 1-D array of integer class ids, got {t.dtype} {t.shape}")
    if len(t) and (t.min() < 0 or t.max() >= num_classes):
        raise DataError(f"targets span [{t.min()}, {t.max()}] but num_classes={num_classes}; labels must lie in "
                        f"[0, {num_classes})")
    return t


def _draw(targets, num_classes: int, n_lab: list[int], n_unl: list[int] | None, seed: int,
          val_per_class: int | list[int], include_labelled: bool, fixed: np.ndarray | None = None) -> Split:
    """The one sampler behind every split. n_unl None -> all the rest; fixed -> a given labelled set;
    val_per_class one count for every class or a list of per-class counts."""
    t = _check_targets(targets, num_classes)
    vals = [val_per_class] * num_classes if isinstance(val_per_class, int) else list(val_per_class)
    if min(vals) < 0 or min(n_lab) < 0 or (n_unl is not None and min(n_unl) < 0):
        raise DataError(f"split counts must be >= 0 (val_per_class={val_per_class}, labelled={n_lab}, "
                        f"unlabelled={n_unl})")
    taken = np.zeros(len(t), bool)
    if fixed is not None:
        taken[fixed] = True  # val and unlabelled are drawn from the images outside the given labelled set
    rng = np.random.default_rng(seed)
    parts = {p: [] for p in PARTS}
    for k in range(num_classes):
        val_per_class = vals[k]
        idx = np.flatnonzero((t == k) & ~taken)
        perm = rng.permutation(idx)
        nl = 0 if fixed is not None else n_lab[k]
        if fixed is None and nl == 0:
            raise DataError(f"class {k} would get 0 labelled images (labelled counts {n_lab}); raise the head "
                            "count (n1 / labels_per_class) or lower gamma so that every class keeps one")
        nu = len(perm) - val_per_class - nl if n_unl is None else n_unl[k]
        if val_per_class + nl + max(nu, 0) > len(perm):
            where = " outside labelled_idx_file" if fixed is not None else ""
            asked = f"{val_per_class} val + {nl} labelled" + ("" if n_unl is None else f" + {nu} unlabelled")
            raise DataError(f"class {k} has {len(perm)} train images{where} but the split asks for {asked} = "
                            f"{val_per_class + nl + max(nu, 0)}; lower labels_per_class / n1 / m1 / val_per_class")
        v, lab = perm[:val_per_class], perm[val_per_class:val_per_class + nl]
        parts["val"].append(v)
        parts["labelled"].append(lab)
        parts["unlabelled"].append(perm[val_per_class + nl:val_per_class + nl + nu])
    out = {p: np.sort(np.concatenate(parts[p])).astype(np.int64) for p in PARTS}
    if fixed is not None:
        out["labelled"] = np.sort(fixed).astype(np.int64)
    if include_labelled:
        out["unlabelled"] = np.union1d(out["unlabelled"], out["labelled"]).astype(np.int64)
    return Split(**out)


def balanced_split(targets, num_classes: int, labels_per_class: int, seed: int, val_per_class: int = 0,
                   include_labelled: bool = True) -> Split:
    """``labels_per_class`` labelled images of every class; all the rest is unlabelled."""
    if labels_per_class < 1:
        raise DataError(f"labels_per_class={labels_per_class} must be >= 1")
    return _draw(targets, num_classes, [labels_per_class] * num_classes, None, seed, val_per_class, include_labelled)


def long_tail_split(targets, num_classes: int, n1: int, gamma_l: float, m1: int, gamma_u: float,
                    unlabelled_dist: str, seed: int, val_per_class: int = 0,
                    include_labelled: bool = False) -> Split:
    """DASO-style: N_k from (n1, gamma_l); M_k from (m1, gamma_u) in the ``unlabelled_dist`` order."""
    _check_gamma("gamma_l", gamma_l)
    n_unl = _unlabelled_counts(m1, gamma_u, num_classes, unlabelled_dist)
    return _draw(targets, num_classes, long_tail_counts(n1, gamma_l, num_classes), n_unl, seed, val_per_class,
                 include_labelled)


def ratio_split(targets, num_classes: int, n1: int, gamma: float, label_ratio: float, seed: int,
                val_per_class: int = 0, include_labelled: bool = False) -> Split:
    """ABC / ARL label-ratio form: N_k from (n1, gamma), M_k from ((100 - beta) / beta * n1, gamma)."""
    n_lab, n_unl = _ratio_counts(n1, gamma, label_ratio, num_classes)
    return _draw(targets, num_classes, n_lab, n_unl, seed, val_per_class, include_labelled)


def read_labelled_file(path: str, num_train: int) -> np.ndarray:
    """A .npy of unique train indices -> sorted int64; every problem is a one-line DataError."""
    try:
        idx = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"data.labelled_idx_file={path!r} does not exist") from None
    except Exception as e:  # not .npy, pickled objects, truncated: np.load raises several types
        raise DataError(f"data.labelled_idx_file={path!r} is not a numpy .npy array ({type(e).__name__}); "
                        "write one with numpy.save(path, indices)") from None
    if not isinstance(idx, np.ndarray) or idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) == 0:
        raise DataError(f"data.labelled_idx_file={path!r} must hold a non-empty 1-D integer array, got "
                        f"{getattr(idx, 'dtype', type(idx).__name__)} {getattr(idx, 'shape', '')}")
    bad = idx[(idx < 0) | (idx >= num_train)]
    if len(bad):
        raise DataError(f"data.labelled_idx_file={path!r} holds index {bad[0]} outside the train set [0, {num_train})")
    uniq, counts = np.unique(idx, return_counts=True)
    if len(uniq) != len(idx):
        raise DataError(f"data.labelled_idx_file={path!r} holds index {uniq[counts > 1][0]} more than once")
    return uniq.astype(np.int64)


def all_split(targets, num_classes: int, seed: int, val_fraction: float = 0.0, val_per_class: int = 0,
              include_labelled: bool = True) -> Split:
    """Every train image labelled (the pool and csv sources: the user's labelled images), but the
    validation hold-out: ``val_per_class`` images of each class, or when ``val_fraction`` > 0
    round(val_fraction * n_k), at least 1 and leaving at least 1 to train on. The unlabelled part of the
    train set is empty (the unlabelled images come from the dataset's pool) or, with include_labelled,
    the labelled images themselves (FixMatch's convention)."""
    t = _check_targets(targets, num_classes)
    n = np.bincount(t, minlength=num_classes)
    if val_fraction > 0:
        small = [k for k in range(num_classes) if n[k] < 2]
        if small:
            raise DataError(f"class {small[0]} has {n[small[0]]} labelled image(s); a validation hold-out needs at "
                            "least 2 per class (1 to hold out, 1 to train on): label more, or set data.val_fraction=0 "
                            "with a test set")
        val = [min(max(1, round(val_fraction * int(c))), int(c) - 1) for c in n]
    else:
        val = [val_per_class] * num_classes
    return _draw(t, num_classes, [int(c) - v for c, v in zip(n, val)], None, seed, val, include_labelled)


def resolved_split(cfg: DataConfig) -> str:
    """data.split with auto resolved: all for the pool and csv sources (every labelled image), else balanced."""
    return cfg.split if cfg.split != "auto" else "all" if cfg.name in ("pool", "csv") else "balanced"


def make_split(targets, num_classes: int, cfg: DataConfig, seed: int) -> Split:
    """Dispatch on ``cfg.split``; ``cfg.labelled_idx_file`` (when set) replaces the labelled draw;
    ``cfg.max_unlabelled`` then keeps a seeded random subset of the unlabelled indices."""
    split = _make_split(targets, num_classes, cfg, seed)
    cap = cfg.max_unlabelled
    if cap and len(split.unlabelled) > cap:
        rng = np.random.default_rng([seed, 0x55])  # its own stream: the labelled draw is unchanged by the cap
        keep = np.sort(rng.choice(split.unlabelled, size=cap, replace=False))
        split = Split(split.labelled, keep, split.val)
    return split


def _make_split(targets, num_classes: int, cfg: DataConfig, seed: int) -> Split:
    fixed = read_labelled_file(cfg.labelled_idx_file, len(targets)) if cfg.labelled_idx_file else None
    val, inc = cfg.val_per_class, cfg.include_labelled
    split = resolved_split(cfg)
    if inc is None:  # protocol default: FixMatch/USB reuse labelled images; long-tail protocols keep them apart
        inc = split in ("balanced", "all")
    if cfg.val_fraction and split != "all":
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} applies to data.split=all; with data.split={split} "
                          "set data.val_per_class instead")
    if split == "all":
        if fixed is not None:
            raise ConfigError("data.labelled_idx_file picks labelled images out of a train set; with data.split=all "
                              "every train image is labelled already")
        return all_split(targets, num_classes, seed, cfg.val_fraction or 0.0, val, inc)
    if split == "balanced":
        lpc = cfg.labels_per_class
        if lpc is None and fixed is None:
            if cfg.num_labels is None:
                raise DataError("a balanced split needs data.num_labels or data.labels_per_class")
            if cfg.num_labels % num_classes:
                raise DataError(f"data.num_labels={cfg.num_labels} does not divide over {num_classes} classes; set "
                                f"data.labels_per_class (e.g. {max(1, cfg.num_labels // num_classes)}) instead")
            lpc = cfg.num_labels // num_classes
        if fixed is not None:
            return _draw(targets, num_classes, [0] * num_classes, None, seed, val, inc, fixed)
        return balanced_split(targets, num_classes, lpc, seed, val, inc)
    if split == "long_tail":
        gamma_u = cfg.gamma_l if cfg.gamma_u is None else cfg.gamma_u
        if fixed is None:
            return long_tail_split(targets, num_classes, cfg.n1, cfg.gamma_l, cfg.m1, gamma_u, cfg.unlabelled_dist,
                                   seed, val, inc)
        n_unl = _unlabelled_counts(cfg.m1, gamma_u, num_classes, cfg.unlabelled_dist)
        return _draw(targets, num_classes, [0] * num_classes, n_unl, seed, val, inc, fixed)
    if split == "ratio":
        if fixed is None:
            return ratio_split(targets, num_classes, cfg.n1, cfg.gamma_l, cfg.label_ratio, seed, val, inc)
        n_unl = _ratio_counts(cfg.n1, cfg.gamma_l, cfg.label_ratio, num_classes)[1]
        return _draw(targets, num_classes, [0] * num_classes, n_unl, seed, val, inc, fixed)
    raise ConfigError(f"data.split={cfg.split!r}; choose auto, balanced, long_tail, ratio or all")
