"""Frozen config dataclasses, YAML presets and ``--section.key=value`` overrides.

Precedence: dataclass defaults < preset / config file < command line. Unknown keys and values of
the wrong type raise :class:`ConfigError` (never silently ignored), so a typo cannot run the
wrong experiment. The algorithm section is typed by the algorithm's own dataclass, chosen by
``algorithm.name``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


def cache_root() -> Path:
    """Where semisup caches derived files (decoded image folders, the compiled CPU kernel): $SEMISUP_CACHE,
    default ~/.cache/semisup."""
    return Path(os.environ.get("SEMISUP_CACHE") or Path.home() / ".cache/semisup").expanduser()


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion_mnist"  # a registered dataset source (`semisup list`)
    root: str | None = None  # local files; None -> the source's default locations
    download: bool = False  # use torchvision's downloader (needs a network)
    # -- split --
    # balanced | long_tail | ratio | all (every labelled image is labelled: the pool and csv sources) | auto (all
    # for the pool and csv sources, else balanced; resolved when the config is built, so config.yaml has the name)
    split: str = "auto"
    num_labels: int | None = 40  # balanced: total labels (divided equally over classes)
    labels_per_class: int | None = None  # balanced: overrides num_labels when set
    n1: int = 1500  # long_tail / ratio: labelled images of the largest class
    gamma_l: float = 100.0  # labelled imbalance ratio N1 / NK
    m1: int = 3000  # long_tail: unlabelled images of the largest class
    gamma_u: float | None = None  # unlabelled imbalance ratio; None -> gamma_l
    unlabelled_dist: str = "consistent"  # consistent | uniform | reversed
    label_ratio: float = 20.0  # ratio split: beta in %, unlabelled head M_1 = (100 - beta) / beta * n1 (ABC)
    val_per_class: int = 0  # validation hold-out taken from the train set (per class)
    # validation hold-out as a fraction of each class's labelled images (at least 1, leaving at least 1 to train
    # on); None -> 0.2 when the dataset has no test set (its figures are then validation figures), else 0
    val_fraction: float | None = None
    include_labelled: bool | None = None  # labelled images also in the unlabelled stream; None -> True for
    #                                          balanced (FixMatch/USB), False for long_tail/ratio (DASO, ABC)
    labelled_idx_file: str | None = None  # .npy of train indices to use as the labelled set
    max_unlabelled: int = 0  # keep a seeded random subset of at most this many unlabelled images (0 = all)
    test_subset: int = 0  # evaluate on a seeded random subset of this many test images (0 = the whole test set)
    # -- views --
    weak: str = "flip_crop"  # flip_crop | crop | none
    # auto: the algorithm's own (its class attribute ``strong``: ReMixMatch's CTAugment, DASO's and ACR's
    # RandAugmentMC as their reference codes, FixMatch's table RandAugment otherwise); resolved when the config is
    # built, so config.yaml has the name | randaugment | randaugment_mc (kekmodel's) | ctaugment | none
    strong: str = "auto"
    hflip: bool | None = None  # None -> the dataset's default (no flip on digits / text)
    crop_pad: float = 0.125  # translation: pad by this fraction of the size, random crop back
    randaugment_n: int = 2
    cutout: float = 0.5  # randaugment view: cutout side as a fraction of the image side (upper bound)
    # resize every image to this square size: the folder source (and the built-in sets) stretch to N x N; the
    # pool and csv sources (and predict) scale the shorter side to N and take the centre N x N crop
    image_size: int | None = None
    # SimCLR views (semisup/data/simclr_aug.py): random resized crop of area U(simclr_crop_min, 1), colour
    # jitter strength s (ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s), RGB only)
    simclr_crop_min: float = 0.2
    simclr_strength: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smallcnn"  # a registered model (`semisup list`)
    depth: int = 28  # wrn
    width: int = 2  # wrn widen factor / cnn channel multiplier
    dropout: float = 0.0
    # PyTorch convention. auto: FixMatch's 0.001 (0.999 in TF convention) for runs of >= 10k steps, else
    # 10 / train.steps (see auto_bn_momentum); resolved when the config is built, so config.yaml has the number
    bn_momentum: float | str = "auto"
    leaky_slope: float = 0.1
    init_from: str | None = None  # checkpoint whose encoder weights initialise the model
    # timm:<arch> models: true -> timm's own download and cache (needs a network); PATH -> a local .safetensors /
    # .pth / .bin file of that architecture's weights (offline); false -> random initialisation
    pretrained: bool | str = False
    freeze_encoder: bool = False  # linear evaluation: encoder weights fixed, its BN kept in eval mode


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.03
    # sgd (FixMatch's, every algorithm's default here) | adamw (Adam with weight decay applied to the weights,
    # decoupled: w -= lr * wd * w, as the MixMatch / ReMixMatch / Mean Teacher codes do with Adam; betas 0.9, 0.999)
    name: str = "sgd"
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine (FixMatch: lr cos(7 pi k / 16 K)) | cosine_zero (to 0, SimCLR) | constant
    warmup_steps: int = 0
    ema: float = 0.999  # EMA decay of the evaluated weights; 0 disables the EMA model
    # how the decay rises to `ema` (semisup/ema.py decay_at): recent = min(ema, (1+t)/(10+t)), the average of
    # about the last t/9 steps; uniform = Mean Teacher's min(ema, 1-1/(t+1)); none = constant (FixMatch, USB)
    ema_warmup: str = "recent"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64  # labelled images per step (global, over all ranks)
    # unlabelled batch = mu * batch_size. auto: the algorithm's own ratio (its class attribute ``mu``: FixMatch's
    # 7; 1 for Pseudo-Label, Pi-Model, Mean Teacher, MixMatch and ReMixMatch as in their papers and USB's
    # configs; 2 for DASO and ACR as in their protocol); resolved when the config is built, so config.yaml has it
    mu: int | str = "auto"
    eval_every: int = 200
    eval_batch_size: int = 512
    save_every: int = 0  # write last.pt every N steps (0 -> at every evaluation)
    max_minutes: float = 0.0  # stop (cleanly, with a checkpoint) after this wall time; 0 = off
    # summary.json's APR: pass rates of the evaluations within apr_window x steps of the best one (the
    # ARL paper: +-50 epochs around convergence, a tenth of its 500)
    apr_window: float = 0.1
    # a non-finite loss: stop (one-line error naming the step and the loss terms; last.pt stays the last
    # good checkpoint) | skip (no optimizer/EMA update, BN and algorithm state restored; counted as
    # skipped_steps in metrics.jsonl and summary.json; non-finite weights or 50 skips in a row still stop)
    nonfinite: str = "stop"
    select_on: str = "top1"  # best.pt = the evaluation with the highest top1 | the lowest loss (val, else test)
    patience: int = 0  # early stopping: stop after this many evaluations without a better best.pt; 0 = off
    probe_images: int = 0  # alignment / uniformity of the features of this many test images (2 SimCLR views)


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/default"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward (see benchmarks/RESULTS.md for what it buys)
    # batch norm + LeakyReLU/ReLU as one C++ kernel on CPU (models/fused.py): auto = when a C++ compiler is
    # there (built once, cached), on = required (a clear error if it cannot be built), off = PyTorch's kernels
    fused_bn: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 -> leave torch's default
    progress: bool = True
    tensorboard: bool = True
    dist_timeout: float = 1800.0  # seconds any collective may wait (torchrun): a lost rank fails the job
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


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "run": RunConfig,
}

# -- value checks: (section, key) -> (predicate, human description) ---------------------------
_RANGES = {
    ("optim", "lr"): (lambda v: v > 0, "> 0"),
    ("optim", "name"): (lambda v: v in ("sgd", "adamw"), "sgd or adamw"),
    ("optim", "momentum"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("optim", "ema"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim", "warmup_steps"): (lambda v: v >= 0, ">= 0"),
    ("optim", "ema_warmup"): (lambda v: v in ("recent", "uniform", "none"), "recent, uniform or none"),
    ("optim", "schedule"): (lambda v: v in ("cosine", "cosine_zero", "constant"), "cosine, cosine_zero or constant"),
    ("train", "steps"): (lambda v: v >= 1, ">= 1"),
    ("train", "batch_size"): (lambda v: v >= 1, ">= 1"),
    ("train", "mu"): (lambda v: v == "auto" or (isinstance(v, int) and v >= 0), "auto or >= 0"),
    ("train", "eval_every"): (lambda v: v >= 1, ">= 1"),
    ("train", "apr_window"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("train", "eval_batch_size"): (lambda v: v >= 1, ">= 1"),
    ("train", "save_every"): (lambda v: v >= 0, ">= 0"),
    ("train", "max_minutes"): (lambda v: v >= 0, ">= 0"),
    ("train", "nonfinite"): (lambda v: v in ("stop", "skip"), "stop or skip"),
    ("train", "select_on"): (lambda v: v in ("top1", "loss"), "top1 or loss"),
    ("train", "patience"): (lambda v: v >= 0, ">= 0"),
    ("train", "probe_images"): (lambda v: v == 0 or v >= 2, "0 (off) or >= 2"),
    ("data", "split"): (lambda v: v in ("auto", "balanced", "long_tail", "ratio", "all"),
                        "auto, balanced, long_tail, ratio or all"),
    ("data", "num_labels"): (lambda v: v is None or v >= 1, ">= 1"),
    ("data", "labels_per_class"): (lambda v: v is None or v >= 1, ">= 1"),
    ("data", "n1"): (lambda v: v >= 1, ">= 1"),
    ("data", "m1"): (lambda v: v >= 0, ">= 0"),
    ("data", "gamma_l"): (lambda v: v >= 1, ">= 1 (N1 / NK; 1 means balanced)"),
    ("data", "gamma_u"): (lambda v: v is None or v >= 1, ">= 1 (use unlabelled_dist=reversed to invert)"),
    ("data", "unlabelled_dist"): (lambda v: v in ("consistent", "uniform", "reversed"),
                                  "consistent, uniform or reversed"),
    ("data", "label_ratio"): (lambda v: 0 < v <= 100, "in (0, 100]"),
    ("data", "val_per_class"): (lambda v: v >= 0, ">= 0"),
    ("data", "val_fraction"): (lambda v: v is None or 0 <= v < 1, "in [0, 1)"),
    ("data", "max_unlabelled"): (lambda v: v >= 0, ">= 0 (0 = all)"),
    ("data", "test_subset"): (lambda v: v >= 0, ">= 0 (0 = the whole test set)"),
    ("data", "weak"): (lambda v: v in ("flip_crop", "crop", "none"), "flip_crop, crop or none"),
    ("data", "strong"): (lambda v: v in ("auto", "randaugment", "randaugment_mc", "ctaugment", "none"),
                         "auto, randaugment, randaugment_mc, ctaugment or none"),
    ("data", "crop_pad"): (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    ("data", "randaugment_n"): (lambda v: 0 <= v <= 14, "in [0, 14]"),
    ("data", "cutout"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data", "image_size"): (lambda v: v is None or v >= 4, ">= 4"),
    ("data", "simclr_crop_min"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("data", "simclr_strength"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("model", "depth"): (lambda v: v >= 1, ">= 1"),
    ("model", "width"): (lambda v: v >= 1, ">= 1"),
    ("model", "dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "bn_momentum"): (lambda v: v == "auto" or (isinstance(v, float) and 0 < v <= 1), "auto or in (0, 1]"),
    ("run", "amp"): (lambda v: v in ("auto", "bf16", "fp16", "off"), "auto, bf16, fp16 or off"),
    ("run", "fused_bn"): (lambda v: v in ("auto", "on", "off"), "auto, on or off"),
    ("run", "threads"): (lambda v: v >= 0, ">= 0"),
    ("run", "dist_timeout"): (lambda v: v > 0, "> 0"),
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: None is not allowed")
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(v, inner, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = math.nan
                if math.isfinite(f) and f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            f = float(value)
        elif isinstance(value, str):
            try:
                f = float(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        else:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(f):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return f
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def build_section(cls, values: dict, section: str):
    """Instantiate dataclass ``cls`` from ``values``; unknown keys and bad types raise."""
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping of key: value, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {section}.{unknown[0]}; known keys in {section}: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for k, v in values.items():
        where = f"{section}.{k}"
        kwargs[k] = coerce(v, hints[k], where)
        check = _RANGES.get((section, k))
        if check and not check[0](kwargs[k]):
            raise ConfigError(f"{where}={kwargs[k]!r} is out of range: must be {check[1]}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(args: list[str]) -> dict:
    """``["--train.steps=10", "--data.name", "digits"]`` -> nested dict of raw strings."""
    out: dict = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or len(a) <= 2:
            raise ConfigError(f"unexpected argument {a!r}; overrides look like --section.key=value")
        body = a[2:]
        if "=" in body:
            key, val = body.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{a} needs a value: --section.key=value")
            key, val = body, args[i + 1]
            i += 1
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"bad override {a!r}; use --section.key=value (e.g. --train.steps=100)")
        sec, k = parts
        if sec not in SECTIONS and sec != "algorithm":
            raise ConfigError(
                f"unknown config section {sec!r} in {a!r}; sections: {', '.join([*SECTIONS, 'algorithm'])}"
            )
        out.setdefault(sec, {})[k] = val
        i += 1
    return out


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return data


# Keys added after runs were written, with the value that reproduces how such a run trained: a saved
# config.yaml without the key resumes (and compares) with this value, not the new default.
SAVED_BEFORE = {("optim", "ema_warmup"): "uniform"}


def load_saved(path: str | Path) -> dict:
    """A run's config.yaml, with the keys it predates filled as it ran (SAVED_BEFORE)."""
    raw = load_yaml(path)
    for (sec, key), value in SAVED_BEFORE.items():
        if isinstance(raw.get(sec), dict) and key not in raw[sec]:
            raw[sec][key] = value
    return raw


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return load_yaml(path)


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


def from_dict(raw: dict) -> Config:
    """Build a Config from a nested dict (YAML-like); every key is checked."""
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping of sections")
    from .algorithms import ALGORITHMS  # late import: algorithms import config types

    unknown = sorted(set(raw) - set(SECTIONS) - {"algorithm"})
    if unknown:
        raise ConfigError(
            f"unknown config section {unknown[0]!r}; sections: {', '.join([*SECTIONS, 'algorithm'])}"
        )
    kw = {sec: build_section(cls, raw.get(sec) or {}, sec) for sec, cls in SECTIONS.items()}
    if kw["model"].bn_momentum == "auto":
        kw["model"] = dataclasses.replace(kw["model"], bn_momentum=auto_bn_momentum(kw["train"].steps))
    if not isinstance(raw.get("algorithm") or {}, dict):
        raise ConfigError("section 'algorithm' must be a mapping with at least name: ...")
    alg_raw = dict(raw.get("algorithm") or {})
    name = coerce(alg_raw.pop("name", "fixmatch"), str, "algorithm.name")
    alg_cls = ALGORITHMS.get(name)
    alg = build_section(alg_cls, alg_raw, "algorithm")
    if kw["train"].mu == "auto":
        kw["train"] = dataclasses.replace(kw["train"], mu=alg_cls.mu)
    if kw["data"].split == "auto":
        kw["data"] = dataclasses.replace(kw["data"], split="all" if kw["data"].name in ("pool", "csv") else "balanced")
    if kw["data"].strong == "auto":
        kw["data"] = dataclasses.replace(kw["data"], strong=getattr(alg_cls, "strong", "randaugment"))
    return Config(algorithm=alg, **kw)


def resolve(preset: str | None = None, config_file: str | None = None,
            overrides: list[str] | dict | None = None) -> Config:
    raw: dict = {}
    if preset:
        raw = merge(raw, load_preset(preset))
    if config_file:
        raw = merge(raw, load_yaml(config_file))
    if overrides:
        ov = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        raw = merge(raw, ov)
    return from_dict(raw)


def replace(cfg: Config, **sections: dict) -> Config:
    """Return a copy of ``cfg`` with some keys changed: ``replace(cfg, train={"steps": 5})``."""
    raw = cfg.to_dict()
    raw["algorithm"] = {"name": cfg.algorithm.name, **dataclasses.asdict(cfg.algorithm)}
    return from_dict(merge(raw, sections))


def to_yaml(cfg: Config) -> str:
    d = cfg.to_dict()
    d["algorithm"] = {"name": cfg.algorithm.name, **dataclasses.asdict(cfg.algorithm)}
    return yaml.safe_dump(d, sort_keys=False)
