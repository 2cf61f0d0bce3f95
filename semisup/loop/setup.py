"""``prepare(cfg) -> Setup``: everything a run trains with, built in one fixed order, writing nothing.

The order matters for exact reproduction: the model's initial weights and the algorithm's own
parameters (a rotation head, an auxiliary classifier) draw from torch's generator as seeded by
``setup_runtime``, so the model is built first, then the EMA copy, the algorithm's state and the
optimiser, and finally the DDP / torch.compile wrappers.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..algorithms import Context
from ..algorithms.contract import own_predict
from ..config import Config
from ..data.dataset import Dataset, load_dataset
from ..data.splits import Split, make_split, resolved_split
from ..ema import ModelEMA
from ..errors import UserError
from ..models import build_model
from ..runtime import Runtime, setup_runtime

DEFAULT_VAL_FRACTION = 0.2  # data.val_fraction=None on a dataset without a test set


@dataclass
class Setup:
    """What one run trains with. ``model`` is the plain model on the device; ``net`` is what the training
    forward calls (the model, wrapped for DDP and / or compiled); evaluation, the EMA and checkpoints use
    ``model``. ``bns`` pairs each batch-norm layer with its configured momentum (the loop warms it up)."""

    cfg: Config
    rt: Runtime
    ds: Dataset
    split: Split
    model: torch.nn.Module
    net: torch.nn.Module
    ema: ModelEMA | None
    state: torch.nn.Module | None
    opt: torch.optim.Optimizer
    bns: list
    labelled_counts: np.ndarray
    predict: Callable | None  # the algorithm's own inference (ABC's balanced head), or None: model(x).logits

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model every evaluation (and CTAugment's probe) uses: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def meta(self) -> dict:
        """What a checkpoint must agree with to be resumed, and what predict / export read back."""
        ds, cfg = self.ds, self.cfg
        return {"dataset": ds.name, "num_classes": ds.num_classes, "model": cfg.model.name,
                "algorithm": cfg.algorithm.name, "channels": ds.channels, "image_size": ds.image_size,
                "classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std), "fit": ds.fit}


def prepare_data(cfg: Config, arrays: dict | None = None) -> tuple[Dataset, Split]:
    """Load the dataset and split it; raises UserError before anything is written."""
    ds = load_dataset(cfg.data, arrays)
    data = cfg.data
    if data.val_fraction is None:  # a dataset without a test set holds out part of its labelled images
        no_test = len(ds.test_y) == 0 and resolved_split(data) == "all" and not data.val_per_class
        data = dataclasses.replace(data, val_fraction=DEFAULT_VAL_FRACTION if no_test else 0.0)
    split = make_split(ds.train_y, ds.num_classes, data, cfg.run.seed)
    if len(ds.test_y) == 0 and len(split.val) == 0:
        raise UserError(f"{ds.name} has no test set and the run holds out no validation images, so nothing would "
                        "measure the model: set data.val_fraction (data.split=all) or data.val_per_class, or add a "
                        "test/ folder")
    n = cfg.data.test_subset
    if n and n < len(ds.test_y):  # a seeded subset of the test set, the same for every run of this seed
        keep = np.sort(np.random.default_rng([cfg.run.seed, 0x7E57]).choice(len(ds.test_y), size=n, replace=False))
        ds = dataclasses.replace(ds, test_x=ds.test_x[keep], test_y=ds.test_y[keep])
    return ds, split


def data_fingerprint(ds: Dataset) -> str:
    """A hash of the training images and labels (shapes, dtypes and bytes): the split's indices point into
    them, so a resume on other data would silently train on other images."""
    h = hashlib.blake2b(digest_size=16)
    for a in (ds.train_x, ds.train_y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(memoryview(a).cast("B"))
    key = getattr(ds.extra_x, "key", None)  # an unlabelled pool on disk: the key of the files it was decoded from
    if key:
        h.update(key.encode())
    return h.hexdigest()


def make_optimizer(o, groups: list[dict]) -> torch.optim.Optimizer:
    """optim.name: SGD (momentum, Nesterov) or AdamW (decoupled weight decay); the loop sets the lr each step."""
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, foreach=True)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, foreach=True)


def param_groups(modules: list, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors), as FixMatch/USB do.
    Trainable parameters of an algorithm's state (ReMixMatch's rotation head, ABC's auxiliary
    classifier) are optimised with the model's; frozen ones (an EMA teacher) are not."""
    decay, no_decay = [], []
    for mod in modules:
        for p in mod.parameters() if mod is not None else ():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_job(cfg: Config, rt: Runtime) -> None:
    world = rt.dist.world
    if cfg.train.batch_size % world or (cfg.train.batch_size * cfg.train.mu) % world:
        raise UserError(f"train.batch_size={cfg.train.batch_size} (and mu x batch_size) must divide over "
                        f"{world} processes: the batch is global, each rank takes an equal share")


def _check_unlabelled(cfg: Config, ds: Dataset, split: Split) -> None:
    """Rules that need the data (config-only rules are Config.validate's)."""
    alg = cfg.algorithm
    if alg.views_u and len(split.unlabelled) == 0 and ds.extra_x is None:
        raise UserError(f"algorithm {alg.name!r} needs unlabelled data but the split leaves none (data.m1=0 and "
                        f"{ds.name} has no separate unlabelled set): raise data.m1, or for STL-10 put unlabeled_X.bin "
                        "beside the labelled files")


def batchnorms(model: torch.nn.Module) -> list:
    """(layer, configured momentum) of every batch-norm layer with a momentum. The loop warms the momentum
    up (``optimize.set_step``): a cumulative average (momentum None) for the first 1/m steps, then m.
    FixMatch's m = 0.001 is tuned for 2^20 steps; without the warm-up a run of a few thousand steps would
    evaluate with running statistics still mostly at their initial values (mean 0, variance 1)."""
    return [(m, m.momentum) for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None]


def _wrap(cfg: Config, rt: Runtime, model: torch.nn.Module) -> torch.nn.Module:
    """The training forward's module: DDP syncs the model's gradients across ranks; torch.compile (run.compile)
    compiles the training forward only (EMA, evaluation and checkpoints use the plain model)."""
    net = model
    if rt.dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return torch.compile(net) if cfg.run.compile else net


def prepare(cfg: Config, arrays: dict | None = None) -> Setup:
    """Runtime, data, model, EMA, algorithm state, optimiser and wrappers for ``cfg``; raises UserError for
    anything that cannot run, before the run directory is touched."""
    rt = setup_runtime(cfg.run)
    _check_job(cfg, rt)
    ds, split = prepare_data(cfg, arrays)
    K, alg = ds.num_classes, cfg.algorithm
    model = build_model(cfg.model, K, ds.channels, ds.image_size)  # also loads model.init_from
    # identical initial weights on every rank; then each rank its own stream of dropout masks etc.
    torch.manual_seed(int(np.random.SeedSequence([cfg.run.seed, rt.dist.rank, 7]).generate_state(1)[0]))
    _check_unlabelled(cfg, ds, split)
    model = rt.prepare_model(model)
    bns = batchnorms(model)
    ema = ModelEMA(model, cfg.optim.ema, cfg.optim.ema_warmup) if cfg.optim.ema > 0 else None
    labelled_counts = np.bincount(ds.train_y[split.labelled], minlength=K)
    ctx = Context(K, labelled_counts, model.num_features, cfg.train.steps, rt.device, cfg.optim.ema,
                  cfg.optim.ema_warmup)
    state = alg.init_state(model, ctx)
    if state is not None:
        state = state.to(rt.device)
    # an algorithm's own inference (ABC's balanced head), told whether it is given the EMA copy
    predict = (lambda m, xb: alg.predict(m, xb, state, ema=ema is not None)) if own_predict(alg) else None
    opt = make_optimizer(cfg.optim, param_groups([model, state], cfg.optim.weight_decay))
    return Setup(cfg, rt, ds, split, model, _wrap(cfg, rt, model), ema, state, opt, bns, labelled_counts, predict)
