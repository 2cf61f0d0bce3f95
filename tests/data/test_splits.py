"""Splits: exact paper counts, disjointness, determinism, include_labelled, val hold-out, errors."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semisup.config import DataConfig, from_dict, load_preset
from semisup.data.splits import (
    Split,
    _ratio_counts,
    balanced_split,
    long_tail_counts,
    long_tail_split,
    make_split,
    ratio_split,
)
from semisup.errors import ConfigError, DataError

K = 10


def synthetic_targets(per_class: int = 5000, k: int = K, seed: int = 1) -> np.ndarray:
    # shuffled, so that "index order == class order" can never make a bug look right
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), per_class)).astype(np.int64)


TARGETS = synthetic_targets()


def per_class(split: Split, part: str, targets=TARGETS, k=K) -> list[int]:
    return np.bincount(targets[getattr(split, part)], minlength=k).tolist()


def assert_disjoint(split: Split, include_labelled: bool):
    for part in ("labelled", "unlabelled", "val"):
        idx = getattr(split, part)
        assert idx.dtype == np.int64 and len(np.unique(idx)) == len(idx)
        assert np.all(np.diff(idx) > 0), f"{part} is documented as sorted"
    assert not np.intersect1d(split.val, split.labelled).size
    assert not np.intersect1d(split.val, split.unlabelled).size
    overlap = np.intersect1d(split.labelled, split.unlabelled).size
    assert overlap == (len(split.labelled) if include_labelled else 0)


# -- counts ----------------------------------------------------------------------------------------
def test_long_tail_counts_exact():
    assert long_tail_counts(500, 100, 10) == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert long_tail_counts(1500, 100, 10) == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert long_tail_counts(1500, 100, 10)[-1] == 15
    assert long_tail_counts(3000, 100, 10) == [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]
    assert long_tail_counts(7, 3.0, 1) == [7]
    assert long_tail_counts(40, 1.0, 4) == [40] * 4


@pytest.mark.parametrize("dist, expected_u", [
    ("consistent", [3000, 1798, 1078, 646, 387, 232, 139, 83, 50, 30]),
    ("uniform", [3000] * 10),
    ("reversed", [30, 50, 83, 139, 232, 387, 646, 1078, 1798, 3000]),
])
def test_daso_cifar10_lt_counts(dist, expected_u):
    s = long_tail_split(TARGETS, K, n1=1500, gamma_l=100, m1=3000, gamma_u=100, unlabelled_dist=dist, seed=0)
    assert per_class(s, "labelled") == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    assert per_class(s, "unlabelled") == expected_u
    assert per_class(s, "val") == [0] * K
    assert_disjoint(s, include_labelled=False)
    # imbalance ratio of the labelled set is gamma (up to int truncation)
    assert per_class(s, "labelled")[0] / per_class(s, "labelled")[-1] == 100


def test_fashion_mnist_lt100_preset_counts():
    """The preset's split: DASO's CIFAR-10-LT gamma = 100 setting with N1 = 500 and M1 = 4000, consistent."""
    from semisup.config import from_dict, load_preset

    cfg = from_dict(load_preset("fashion_mnist_lt100"))
    s = make_split(TARGETS, K, cfg.data, seed=0)
    assert per_class(s, "labelled") == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    # M_k = int(4000 * 100 ** (-(k - 1) / 9)), e.g. 4000 * 10 ** (-2 / 9) = 2397.9 -> 2397
    assert per_class(s, "unlabelled") == [4000, 2397, 1437, 861, 516, 309, 185, 111, 66, 40]
    assert_disjoint(s, include_labelled=False)


def test_long_tail_gamma_u_differs():
    s = long_tail_split(TARGETS, K, 1500, 100, 3000, 1.0, "consistent", seed=0)
    assert per_class(s, "unlabelled") == [3000] * K


def test_ratio_split_beta20_gives_four_times_labels():
    s = ratio_split(TARGETS, K, n1=500, gamma=100, label_ratio=20, seed=3)
    n = per_class(s, "labelled")
    assert n == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert per_class(s, "unlabelled") == [2000, 1198, 718, 430, 258, 154, 92, 55, 33, 20]  # ~4 N_k
    assert_disjoint(s, include_labelled=False)
    s40 = ratio_split(TARGETS, K, n1=500, gamma=100, label_ratio=40, seed=3)
    assert per_class(s40, "unlabelled") == long_tail_counts(750, 100, K)  # M_1 = 1.5 N_1


@pytest.mark.parametrize("gamma,lab,unl", [
    (50, [1000, 647, 419, 271, 175, 113, 73, 47, 30, 20], [4000, 2589, 1676, 1085, 703, 455, 294, 190, 123, 80]),
    (100, [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10], [4000, 2397, 1437, 861, 516, 309, 185, 111, 66, 40]),
    (200, [1000, 555, 308, 170, 94, 52, 29, 16, 9, 5], [4000, 2220, 1232, 683, 379, 210, 116, 64, 36, 20]),
])
def test_arl_protocol_counts_match_the_reference_code(gamma, lab, unl):
    """The ARL paper's CIFAR-10-LT (ABC's code: --num_max 1000 --label_ratio 20 --imb_ratio gamma): the
    unlabelled head is 4000 and long-tailed by itself, not 4 x each labelled count (111, not 4 x 27)."""
    assert _ratio_counts(1000, gamma, 20, 10) == (lab, unl)
    cfg = from_dict(load_preset("cifar10_lt_arl"))
    assert (cfg.data.split, cfg.data.n1, cfg.data.label_ratio, cfg.data.gamma_l) == ("ratio", 1000, 20, 100)
    assert cfg.algorithm.name == "fixmatch" and cfg.algorithm.loss_u == "arl" and cfg.algorithm.threshold == 0.95


def test_long_tail_counts_tail_is_exact():
    """The tail count is n_max / gamma exactly (the power alone can land a hair below an integer)."""
    for n_max, gamma in [(500, 100), (1500, 150), (4000, 100), (150, 10), (300, 10), (450, 10), (3000, 150)]:
        c = long_tail_counts(n_max, gamma, 10)
        assert c[-1] == int(n_max / gamma) and c[0] == n_max
        assert all(a >= b for a, b in zip(c, c[1:]))
    # 1500 / 150 ** (1 / 9) = 859.6
    assert long_tail_counts(1500, 150, 10) == [1500, 859, 492, 282, 161, 92, 53, 30, 17, 10]


def test_balanced_counts_and_include_labelled():
    s = balanced_split(TARGETS, K, labels_per_class=4, seed=0)
    assert per_class(s, "labelled") == [4] * K
    assert np.array_equal(s.unlabelled, np.arange(len(TARGETS)))  # FixMatch: every train image
    assert_disjoint(s, include_labelled=True)
    s = balanced_split(TARGETS, K, labels_per_class=4, seed=0, include_labelled=False)
    assert per_class(s, "unlabelled") == [4996] * K
    assert_disjoint(s, include_labelled=False)


def test_long_tail_include_labelled_adds_labelled_only():
    s = long_tail_split(TARGETS, K, 100, 10, 200, 10, "consistent", seed=0, include_labelled=True)
    n, m = long_tail_counts(100, 10, K), long_tail_counts(200, 10, K)
    assert per_class(s, "unlabelled") == [a + b for a, b in zip(n, m)]
    assert_disjoint(s, include_labelled=True)


def test_val_hold_out():
    s = balanced_split(TARGETS, K, 25, seed=0, val_per_class=50)
    assert per_class(s, "val") == [50] * K
    assert np.array_equal(np.sort(np.concatenate([s.unlabelled, s.val])), np.arange(len(TARGETS)))
    assert_disjoint(s, include_labelled=True)
    s = long_tail_split(TARGETS, K, 1500, 100, 3000, 100, "reversed", seed=0, val_per_class=500)
    assert per_class(s, "val") == [500] * K
    assert_disjoint(s, include_labelled=False)


# -- determinism -----------------------------------------------------------------------------------
def test_same_seed_same_split_different_seed_different():
    a = balanced_split(TARGETS, K, 4, seed=7, val_per_class=3)
    b = balanced_split(TARGETS, K, 4, seed=7, val_per_class=3)
    c = balanced_split(TARGETS, K, 4, seed=8, val_per_class=3)
    for part in ("labelled", "unlabelled", "val"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.labelled, c.labelled)
    assert not np.array_equal(a.val, c.val)
    lt = [long_tail_split(TARGETS, K, 150, 10, 300, 10, "consistent", seed=s) for s in (1, 1, 2)]
    assert np.array_equal(lt[0].unlabelled, lt[1].unlabelled)
    assert not np.array_equal(lt[0].unlabelled, lt[2].unlabelled)


def test_smaller_labelled_set_is_nested_in_larger():
    small = balanced_split(TARGETS, K, 4, seed=5, val_per_class=10)
    large = balanced_split(TARGETS, K, 25, seed=5, val_per_class=10)
    assert np.isin(small.labelled, large.labelled).all()
    assert np.array_equal(small.val, large.val)


def test_labels_come_from_the_right_class():
    t = synthetic_targets(30, 3, seed=4)
    s = balanced_split(t, 3, 5, seed=0)
    assert sorted(t[s.labelled].tolist()) == [0] * 5 + [1] * 5 + [2] * 5


# -- manifest --------------------------------------------------------------------------------------
def test_manifest_json_and_counts():
    s = long_tail_split(TARGETS, K, 1500, 100, 3000, 100, "uniform", seed=11, val_per_class=5)
    m = json.loads(json.dumps(s.manifest(TARGETS, 11, K)))
    assert m["seed"] == 11 and m["num_classes"] == K
    assert m["counts"]["labelled"] == long_tail_counts(1500, 100, K)
    assert m["counts"]["unlabelled"] == [3000] * K
    assert m["counts"]["val"] == [5] * K
    assert m["labelled"] == s.labelled.tolist() and m["val"] == s.val.tolist()
    assert len(m["unlabelled"]) == 30000


# -- make_split (config dispatch) ------------------------------------------------------------------
def test_make_split_dispatch():
    s = make_split(TARGETS, K, DataConfig(num_labels=40), seed=0)
    assert per_class(s, "labelled") == [4] * K and len(s.unlabelled) == len(TARGETS)
    s = make_split(TARGETS, K, DataConfig(num_labels=40, labels_per_class=2), seed=0)  # labels_per_class wins
    assert per_class(s, "labelled") == [2] * K
    cfg = DataConfig(split="long_tail", n1=1500, gamma_l=100, m1=3000, gamma_u=None, include_labelled=False)
    s = make_split(TARGETS, K, cfg, seed=0)
    assert per_class(s, "unlabelled") == long_tail_counts(3000, 100, K)  # gamma_u None -> gamma_l
    s = make_split(TARGETS, K, DataConfig(split="ratio", n1=500, gamma_l=100, label_ratio=20, include_labelled=False),
                   seed=0)
    assert per_class(s, "unlabelled") == long_tail_counts(2000, 100, K)  # M_1 = 4 N_1, long-tailed itself


@pytest.mark.parametrize("split", ["balanced", "long_tail", "ratio"])
def test_labelled_idx_file_overrides(tmp_path, split):
    chosen = np.array([5, 17, 3, 40000, 123], np.int64)
    f = tmp_path / "lab.npy"
    np.save(f, chosen)
    cfg = DataConfig(split=split, labelled_idx_file=str(f), val_per_class=20, n1=100, m1=200, gamma_l=10,
                     include_labelled=False)
    s = make_split(TARGETS, K, cfg, seed=0)
    assert np.array_equal(s.labelled, np.sort(chosen))
    assert per_class(s, "val") == [20] * K
    assert_disjoint(s, include_labelled=False)
    if split != "balanced":
        assert sum(per_class(s, "unlabelled")) == sum(long_tail_counts(200, 10, K) if split == "long_tail"
                                                      else long_tail_counts(400, 10, K))


# -- errors ----------------------------------------------------------------------------------------
def test_error_more_labels_than_a_class_has():
    t = np.concatenate([np.zeros(100, np.int64), np.ones(3, np.int64)])
    with pytest.raises(DataError, match=r"class 1 has 3 train images .* 0 val \+ 4 labelled"):
        balanced_split(t, 2, 4, seed=0)
    with pytest.raises(DataError, match=r"class 1 has 3 .* 2 val \+ 2 labelled"):
        balanced_split(t, 2, 2, seed=0, val_per_class=2)


def test_error_long_tail_over_budget():
    with pytest.raises(DataError, match=r"class 0 has 5000 train images .* 1500 labelled \+ 4000 unlabelled"):
        long_tail_split(TARGETS, K, 1500, 100, 4000, 100, "consistent", seed=0)
    with pytest.raises(DataError, match=r"class 9 has 5000 .* 100 val \+ 15 labelled \+ 4900 unlabelled"):
        long_tail_split(TARGETS, K, 1500, 100, 4900, 100, "reversed", seed=0, val_per_class=100)


def test_error_class_left_without_labels():
    with pytest.raises(DataError, match=r"class 8 would get 0 labelled .*\[50, 29, 17, 10, 6, 3, 2, 1, 0, 0\]"):
        long_tail_split(TARGETS, K, 50, 100, 100, 100, "consistent", seed=0)
    with pytest.raises(DataError, match="0 labelled"):
        ratio_split(TARGETS, K, 50, 100, 20, seed=0)


@pytest.mark.parametrize("gamma", [0.5, float("nan"), float("inf")])
def test_error_gamma_below_one(gamma):
    with pytest.raises(DataError, match="must be a finite ratio >= 1"):
        long_tail_counts(100, gamma, K)
    with pytest.raises(DataError, match="gamma_u"):
        long_tail_split(TARGETS, K, 100, 10, 100, gamma, "consistent", seed=0)


def test_error_bad_arguments():
    with pytest.raises(DataError, match="labels_per_class=0"):
        balanced_split(TARGETS, K, 0, seed=0)
    with pytest.raises(DataError, match="label_ratio"):
        ratio_split(TARGETS, K, 100, 10, 0, seed=0)
    with pytest.raises(ConfigError, match="unlabelled_dist"):
        long_tail_split(TARGETS, K, 100, 10, 100, 10, "sideways", seed=0)
    with pytest.raises(DataError, match=r"targets span \[0, 9\] but num_classes=5"):
        balanced_split(TARGETS, 5, 1, seed=0)
    with pytest.raises(DataError, match="integer class ids"):
        balanced_split(TARGETS.astype(float), K, 1, seed=0)
    with pytest.raises(DataError, match="val_per_class=-1"):
        balanced_split(TARGETS, K, 1, seed=0, val_per_class=-1)


def test_error_num_labels_not_divisible():
    with pytest.raises(DataError, match=r"num_labels=45 does not divide over 10 classes; set data.labels_per_class"):
        make_split(TARGETS, K, DataConfig(num_labels=45), seed=0)
    with pytest.raises(DataError, match="num_labels or data.labels_per_class"):
        make_split(TARGETS, K, DataConfig(num_labels=None), seed=0)
    with pytest.raises(ConfigError, match="data.split='halves'"):
        make_split(TARGETS, K, DataConfig(split="halves"), seed=0)


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"not numpy", "is not a numpy .npy array"),
    (np.array([1.5, 2.0]), "1-D integer array"),
    (np.zeros((2, 2), np.int64), "1-D integer array"),
    (np.array([], np.int64), "non-empty"),
    (np.array([3, 50000]), "index 50000 outside the train set"),
    (np.array([-1, 2]), "index -1 outside"),
    (np.array([4, 9, 4]), "index 4 more than once"),
])
def test_error_labelled_idx_file(tmp_path, content, match):
    f = tmp_path / "lab.npy"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        np.save(f, content)
    with pytest.raises(DataError, match=match):
        make_split(TARGETS, K, DataConfig(labelled_idx_file=str(f)), seed=0)


# -- properties ------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(3, 40), min_size=1, max_size=6), lpc=st.integers(1, 2),
       val=st.integers(0, 1), seed=st.integers(0, 2**32 - 1), include=st.booleans())
def test_property_balanced(sizes, lpc, val, seed, include):
    t = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int64)
    s = balanced_split(t, len(sizes), lpc, seed, val_per_class=val, include_labelled=include)
    assert_disjoint(s, include)
    k = len(sizes)
    assert per_class(s, "labelled", t, k) == [lpc] * k and per_class(s, "val", t, k) == [val] * k
    # every image is in exactly one of val / labelled / unlabelled (or in both of the latter two)
    assert len(np.union1d(np.union1d(s.val, s.labelled), s.unlabelled)) == len(t)


@settings(max_examples=60, deadline=None)
@given(n1=st.integers(1, 60), gamma=st.floats(1, 50), m1=st.integers(0, 60),
       dist=st.sampled_from(["consistent", "uniform", "reversed"]), seed=st.integers(0, 1000),
       k=st.integers(1, 6))
def test_property_long_tail(n1, gamma, m1, dist, seed, k):
    t = np.repeat(np.arange(k), 130).astype(np.int64)
    n = long_tail_counts(n1, gamma, k)
    assert n[0] == n1 and all(a >= b for a, b in zip(n, n[1:]))
    if min(n) == 0:
        with pytest.raises(DataError, match="0 labelled"):
            long_tail_split(t, k, n1, gamma, m1, gamma, dist, seed)
        return
    s = long_tail_split(t, k, n1, gamma, m1, gamma, dist, seed, val_per_class=2)
    assert per_class(s, "labelled", t, k) == n
    m = {"consistent": long_tail_counts(m1, gamma, k), "uniform": [m1] * k,
         "reversed": long_tail_counts(m1, gamma, k)[::-1]}[dist]
    assert per_class(s, "unlabelled", t, k) == m
    assert_disjoint(s, include_labelled=False)


def test_stl10_lt_preset_and_a_split_with_no_unlabelled_images(tmp_path):
    """STL-10-LT takes its unlabelled images from the separate unlabeled split only (m1 = 0); where a dataset
    has none, an SSL run stops with a one-line error before writing anything."""
    cfg = from_dict(load_preset("stl10_lt"))
    t = np.repeat(np.arange(10), 500)  # STL-10's 500 labelled train images per class
    s = make_split(t, 10, cfg.data, seed=0)
    labelled = np.bincount(t[s.labelled], minlength=10).tolist()
    assert labelled == long_tail_counts(450, 10, 10) and labelled[-1] == 45 and len(s.unlabelled) == 0

    from helpers import tiny_overrides

    from semisup import config as C
    from semisup.errors import UserError
    from semisup.train import train

    out = tmp_path / "run"
    bad = C.resolve(None, overrides=tiny_overrides(out, **{"data.split": "long_tail", "data.n1": 20,
                                                            "data.gamma_l": 2, "data.m1": 0}))
    with pytest.raises(UserError, match="leaves none"):
        train(bad)
    assert not out.exists()
