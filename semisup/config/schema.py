"""The config schema: one frozen dataclass per section, each field with its default and, as metadata, the rule
its value must keep (rules.py); ``Config.validate`` holds the rules across sections.

The algorithm section is typed by the algorithm's own dataclass (semisup/algorithms), chosen by ``algorithm.name``.
Choices that name registered things read their registry (learning-rate schedules, EMA warm-ups); dataset and
model names are checked by their registries when the data is loaded and the model built (the data and models
import this schema, so it does not import them).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ema import WARMUPS
from ..errors import ConfigError
from ..schedules import LR_SCHEDULES
from .rules import AT_LEAST_1, NONNEG, POSITIVE, UNIT, UNIT_OPEN, Range, one_of, param

AUTO = (("auto", "auto"),)  # Range(also=AUTO): "auto", resolved when the config is built, or a number


def cache_root() -> Path:
    """Where semisup caches derived files (decoded image folders, the compiled CPU kernel): $SEMISUP_CACHE,
    default ~/.cache/semisup."""
    return Path(os.environ.get("SEMISUP_CACHE") or Path.home() / ".cache/semisup").expanduser()


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion_mnist"  # a registered dataset source (`semisup list`; checked when the data is loaded)
    root: str | None = None  # local files; None -> the source's default locations
    download: bool = False  # use torchvision's downloader (needs a network)
    # -- split --
    # balanced | long_tail | ratio | all (every labelled image is labelled: the pool and csv sources) | auto (all
    # for the pool and csv sources, else balanced; resolved when the config is built, so config.yaml has the name)
    split: str = param("auto", one_of("auto", "balanced", "long_tail", "ratio", "all"))
    num_labels: int | None = param(40, AT_LEAST_1)  # balanced: total labels (divided equally over classes)
    labels_per_class: int | None = param(None, AT_LEAST_1)  # balanced: overrides num_labels when set
    n1: int = param(1500, AT_LEAST_1)  # long_tail / ratio: labelled images of the largest class
    gamma_l: float = param(100.0, Range(1, note="N1 / NK; 1 means balanced"))  # labelled imbalance ratio N1 / NK
    m1: int = param(3000, NONNEG)  # long_tail: unlabelled images of the largest class
    # unlabelled imbalance ratio; None -> gamma_l
    gamma_u: float | None = param(None, Range(1, note="use unlabelled_dist=reversed to invert"))
    unlabelled_dist: str = param("consistent", one_of("consistent", "uniform", "reversed"))
    # ratio split: beta in %, unlabelled head M_1 = (100 - beta) / beta * n1 (ABC)
    label_ratio: float = param(20.0, Range(0, 100, lo_open=True))
    val_per_class: int = param(0, NONNEG)  # validation hold-out taken from the train set (per class)
    # validation hold-out as a fraction of each class's labelled images (at least 1, leaving at least 1 to train
    # on); None -> 0.2 when the dataset has no test set (its figures are then validation figures), else 0
    val_fraction: float | None = param(None, UNIT_OPEN)
    include_labelled: bool | None = None  # labelled images also in the unlabelled stream; None -> True for
    #                                          balanced (FixMatch/USB), False for long_tail/ratio (DASO, ABC)
    labelled_idx_file: str | None = None  # .npy of train indices to use as the labelled set
    # keep a seeded random subset of at most this many unlabelled images (0 = all)
    max_unlabelled: int = param(0, Range(0, note="0 = all"))
    # evaluate on a seeded random subset of this many test images (0 = the whole test set)
    test_subset: int = param(0, Range(0, note="0 = the whole test set"))
    # -- views --
    weak: str = param("flip_crop", one_of("flip_crop", "crop", "none"))
    # auto: the algorithm's own (its class attribute ``strong``: ReMixMatch's CTAugment, DASO's and ACR's
    # RandAugmentMC as their reference codes, FixMatch's table RandAugment otherwise); resolved when the config is
    # built, so config.yaml has the name | randaugment | randaugment_mc (kekmodel's) | ctaugment | none
    strong: str = param("auto", one_of("auto", "randaugment", "randaugment_mc", "ctaugment", "none"))
    hflip: bool | None = None  # None -> the dataset's default (no flip on digits / text)
    # translation: pad by this fraction of the size, random crop back
    crop_pad: float = param(0.125, Range(0, 0.5, hi_open=True))
    randaugment_n: int = param(2, Range(0, 14))
    cutout: float = param(0.5, UNIT)  # randaugment view: cutout side as a fraction of the image side (upper bound)
    # resize every image to this square size: the folder source (and the built-in sets) stretch to N x N; the
    # pool and csv sources (and predict) scale the shorter side to N and take the centre N x N crop
    image_size: int | None = param(None, Range(4))
    # SimCLR views (semisup/data/simclr_aug.py): random resized crop of area U(simclr_crop_min, 1), colour
    # jitter strength s (ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s), RGB only)
    simclr_crop_min: float = param(0.2, Range(0, 1, lo_open=True))
    simclr_strength: float = param(0.5, UNIT)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smallcnn"  # a registered model (`semisup list`) or timm:<arch>; checked when the model is built
    depth: int = param(28, AT_LEAST_1)  # wrn
    width: int = param(2, AT_LEAST_1)  # wrn widen factor / cnn channel multiplier
    dropout: float = param(0.0, UNIT_OPEN)
    # PyTorch convention. auto: FixMatch's 0.001 (0.999 in TF convention) for runs of >= 10k steps, else
    # 10 / train.steps (see auto_bn_momentum); resolved when the config is built, so config.yaml has the number
    bn_momentum: float | str = param("auto", Range(0, 1, lo_open=True, also=AUTO))
    leaky_slope: float = 0.1
    init_from: str | None = None  # checkpoint whose encoder weights initialise the model
    # also load init_from's classifier head (same classes): continue a run's model under another algorithm,
    # e.g. FixMatch from a supervised run, without relearning the head from a random start
    init_head: bool = False
    # timm:<arch> models: true -> timm's own download and cache (needs a network); PATH -> a local .safetensors /
    # .pth / .bin file of that architecture's weights (offline); false -> random initialisation
    pretrained: bool | str = False
    freeze_encoder: bool = False  # linear evaluation: encoder weights fixed, its BN kept in eval mode


# What optim.lr / weight_decay / schedule = auto mean for each optimiser, unless the algorithm declares its own
# (its class attribute ``optim``, e.g. REFERENCE_ADAM below): SGD as FixMatch's code; AdamW with the lr and
# weight decay of the MixMatch and ReMixMatch codes (0.002; 0.02 x lr on the weights) and the loop's cosine.
OPTIMISER_DEFAULTS = {"sgd": {"lr": 0.03, "weight_decay": 5e-4, "schedule": "cosine"},
                      "adamw": {"lr": 0.002, "weight_decay": 0.02, "schedule": "cosine"}}
# The optimiser of the MixMatch, ReMixMatch and ABC codes (their class attribute ``optim``): Adam 0.002, weight
# decay 0.02 x lr on the weights after each step, no lr decay.
REFERENCE_ADAM = {"name": "adamw", "lr": 0.002, "weight_decay": 0.02, "schedule": "constant"}


@dataclass(frozen=True)
class OptimConfig:
    # auto: the algorithm's own optimiser (its ``optim`` class attribute, see auto_optim), else sgd.
    # sgd (FixMatch's) | adamw (Adam with weight decay applied to the weights, decoupled: w -= lr * wd * w, as the
    # MixMatch / ReMixMatch / Mean Teacher codes do with Adam; betas 0.9, 0.999)
    name: str = param("auto", one_of("auto", "sgd", "adamw"))
    lr: float | str = param("auto", Range(0, lo_open=True, also=AUTO))  # auto: sgd 0.03, adamw 0.002
    momentum: float = param(0.9, UNIT_OPEN)  # sgd
    nesterov: bool = True  # sgd
    weight_decay: float | str = param("auto", Range(0, also=AUTO))  # auto: sgd 5e-4, adamw 0.02 (x lr)
    # cosine (FixMatch: lr cos(7 pi k / 16 K)) | cosine_zero (to 0, SimCLR) | constant: semisup.schedules.
    # auto: cosine, or the algorithm's
    schedule: str = param("auto", one_of("auto", *LR_SCHEDULES))
    warmup_steps: int = param(0, NONNEG)
    ema: float = param(0.999, UNIT_OPEN)  # EMA decay of the evaluated weights; 0 disables the EMA model
    # how the decay rises to `ema` (semisup/ema.py decay_at): recent = min(ema, (1+t)/(10+t)), the average of
    # about the last t/9 steps; uniform = Mean Teacher's min(ema, 1-1/(t+1)); none = constant (FixMatch, USB)
    ema_warmup: str = param("recent", one_of(*WARMUPS))


def auto_optim(optim: OptimConfig, declared: dict) -> OptimConfig:
    """``optim`` with each ``auto`` field resolved: the name to the algorithm's declared optimiser (``declared``,
    its ``optim`` class attribute; SGD when it declares none), lr / weight_decay / schedule to the algorithm's
    values when it runs the optimiser it declares, else to that optimiser's OPTIMISER_DEFAULTS (an algorithm
    that declares Adam, run with --optim.name=sgd, gets SGD's lr, not Adam's)."""
    name = declared.get("name", "sgd") if optim.name == "auto" else optim.name
    values = {**OPTIMISER_DEFAULTS[name], **(declared if declared.get("name", "sgd") == name else {})}
    return dataclasses.replace(optim, name=name, **{k: values[k] for k in ("lr", "weight_decay", "schedule")
                                                    if getattr(optim, k) == "auto"})


@dataclass(frozen=True)
class TrainConfig:
    steps: int = param(2000, AT_LEAST_1)
    batch_size: int = param(64, AT_LEAST_1)  # labelled images per step (global, over all ranks)
    # unlabelled batch = mu * batch_size. auto: the algorithm's own ratio (its class attribute ``mu``: FixMatch's
    # 7; 1 for Pseudo-Label, Pi-Model, Mean Teacher, MixMatch and ReMixMatch as in their papers and USB's
    # configs; 2 for DASO and ACR as in their protocol); resolved when the config is built, so config.yaml has it
    mu: int | str = param("auto", Range(0, also=AUTO))
    eval_every: int = param(200, AT_LEAST_1)
    eval_batch_size: int = param(512, AT_LEAST_1)
    save_every: int = param(0, NONNEG)  # write last.pt every N steps (0 -> at every evaluation)
    max_minutes: float = param(0.0, NONNEG)  # stop (cleanly, with a checkpoint) after this wall time; 0 = off
    # summary.json's APR: pass rates of the evaluations within apr_window x steps of the best one (the
    # ARL paper: +-50 epochs around convergence, a tenth of its 500)
    apr_window: float = param(0.1, UNIT)
    # a non-finite loss: stop (one-line error naming the step and the loss terms; last.pt stays the last
    # good checkpoint) | skip (no optimizer/EMA update, BN and algorithm state restored; counted as
    # skipped_steps in metrics.jsonl and summary.json; non-finite weights or 50 skips in a row still stop)
    nonfinite: str = param("stop", one_of("stop", "skip"))
    # best.pt = the evaluation with the highest top1 | the lowest loss (val, else test)
    select_on: str = param("top1", one_of("top1", "loss"))
    # early stopping: stop after this many evaluations without a better best.pt; 0 = off (needs data.val_per_class)
    patience: int = param(0, NONNEG)
    # alignment / uniformity of the features of this many test images (2 SimCLR views)
    probe_images: int = param(0, Range(2, also=((0, "0 (off)"),)))


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/default"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = param("auto", one_of("auto", "bf16", "fp16", "off"))
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward (see benchmarks/RESULTS.md for what it buys)
    # batch norm + LeakyReLU/ReLU as one C++ kernel on CPU (models/fused.py): auto = when a C++ compiler is
    # there (built once, cached), on = required (a clear error if it cannot be built), off = PyTorch's kernels
    fused_bn: str = param("auto", one_of("auto", "on", "off"))
    threads: int = param(0, NONNEG)  # torch intra-op threads; 0 -> leave torch's default
    progress: bool = True
    tensorboard: bool = True
    dist_timeout: float = param(1800.0, POSITIVE)  # seconds any collective may wait (torchrun): a lost rank fails
    # --resume refuses when the training data changed since the run started (split.json's data_fingerprint);
    # true resumes anyway (the split's indices then point at whatever images are there now)
    allow_data_change: bool = False


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    algorithm: Any = None  # the algorithm's own frozen dataclass (with a `name` field)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """The rules across sections, checked once when a config is built (from_dict). Each section's own
        rules are its fields' (rules.check_fields); rules that need the data or the world size are the loop's."""
        if self.train.patience and not self.data.val_per_class:
            raise ConfigError(f"train.patience={self.train.patience} (early stopping) needs a validation hold-out: "
                              "set data.val_per_class >= 1 (stopping on the test set would tune on it)")
        alg, mu = self.algorithm, self.train.mu
        if getattr(alg, "views_u", ()) and isinstance(mu, int) and mu < 1:
            raise ConfigError(f"algorithm {alg.name!r} needs unlabelled data: set train.mu >= 1")


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "run": RunConfig,
}


def auto_bn_momentum(steps: int | None) -> float:
    """BN momentum for a run of ``steps`` steps (None: a long run). FixMatch's 0.001 averages the running
    statistics over ~1000 steps; with the loop's warm-up (momentum_t = max(m, 1/(t+1))), a run of 1000 steps
    or fewer ends with the plain average of every step's batch statistics, half of them from a network of the
    first half of training whose features have since moved: measured, Pseudo-Label on Fashion-MNIST (1000
    steps) scored 33 % in eval mode with the same weights that scored 58 % with batch statistics. Below 10k
    steps: 10 / steps (a time constant of a tenth of the run), at most PyTorch's default 0.1."""
    if steps is None or steps >= 10_000:
        return 0.001
    return min(0.1, 10.0 / max(1, steps))
