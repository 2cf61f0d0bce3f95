"""THE training loop. Nothing else in semisup iterates over batches or calls backward().

One loop for every algorithm: a labelled stream of B images and an unlabelled stream of mu*B,
each batch a pure function of (seed, step) (exact resume for free); batched uint8 augmentation;
one optimizer (SGD, Nesterov) with FixMatch's cosine decay; an EMA of the weights for
evaluation; evaluation every N steps; atomic last.pt / best.pt; metrics.jsonl + TensorBoard.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.profiler import record_function

from . import checkpoint, dist, losses
from .algorithms import Batch, Context
from .config import Config, from_dict, load_saved, to_yaml
from .data.ctaugment import CTAugment
from .data.simclr_aug import simclr_view
from .data.sources import Dataset, load_dataset
from .data.splits import Split, make_split, resolved_split
from .data.stream import IndexStream, Unlabelled
from .data.transforms import make_view, to_float, weak
from .ema import ModelEMA
from .errors import LostRank, UserError
from .metrics import PseudoLabelTracker, apr, classification_metrics, confusion_matrix, group_metrics, ler
from .models import build_model
from .runlock import RunLock
from .runtime import Runtime, setup_runtime
from .schedules import LR_SCHEDULES

RUN_FILES = ("config.yaml", "split.json", "metrics.jsonl", "summary.json", "last.pt", "last.prev.pt",
             "best.pt", "best.prev.pt", "encoder.pt")
# Run-section keys that may change when a run is resumed (they do not change the result).
RESUMABLE_KEYS = {"run.progress", "run.tensorboard", "run.threads", "run.out", "train.max_minutes",
                  "run.dist_timeout", "train.nonfinite", "train.apr_window", "run.allow_data_change"}
TRACKER_FIELDS = ("seen", "passed_true", "correct_true", "passed_pred", "correct_pred", "correct_all")
MAX_SKIP_WARNINGS = 10  # train.nonfinite=skip: warn for the first few skipped steps, then only count them
MAX_CONSECUTIVE_SKIPS = 50  # ... and stop as `stop` would when this many in a row fail: the weights are broken


class Stopped(KeyboardInterrupt):
    """SIGTERM / SIGINT: the loop finished its step, evaluated and wrote last.pt, then raised this.
    The CLI exits with 128 + signum (143 for SIGTERM, 130 for SIGINT), the shell's "killed by"
    convention, so a scheduler or script can tell a pre-empted run (resume it) from a finished one."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainResult:
    run_dir: Path
    final: dict  # the last evaluation ({"step", "test": {...}, "val": {...}?}; "val" alone without a test set)
    best: dict  # the evaluation that produced best.pt
    steps: int
    train_seconds: float
    images_per_s: float


DEFAULT_VAL_FRACTION = 0.2  # data.val_fraction=None on a dataset without a test set


def eval_part(record: dict) -> str:
    """Which part of a metrics record holds the run's headline figures: "test", or "val" for a dataset without
    a test set (its figures are validation figures)."""
    return "test" if "test" in record else "val"


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


def _check_data(run_dir: Path, fingerprint: str, allow: bool) -> None:
    """Resume: refuse when the training data are not those the run started on (split.json's fingerprint;
    runs written before it existed have none and are not checked)."""
    try:
        saved = json.loads((run_dir / "split.json").read_text()).get("data_fingerprint")
    except (OSError, ValueError):
        saved = None
    if saved and saved != fingerprint and not allow:
        raise UserError(f"cannot resume {str(run_dir)!r}: the training data changed since the run started (data "
                        f"fingerprint {saved[:12]}..., now {fingerprint[:12]}...), so the split's indices would point "
                        "at other images; restore the data it trained on, or resume anyway with "
                        "--run.allow_data_change=true")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_run_dir(run_dir: Path, cfg: Config, resume: bool, overwrite: bool) -> None:
    holds_run = any((run_dir / f).exists() for f in RUN_FILES)
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.exists():
            raise UserError(f"cannot resume: {str(run_dir)!r} holds no run (no config.yaml); drop --resume")
        # keys added after the run was written take their defaults (from_dict), or the value the run trained
        # with where the default changed since (load_saved)
        old = _flat(yaml.safe_load(to_yaml(from_dict(load_saved(saved)))))
        new = _flat(yaml.safe_load(to_yaml(cfg)))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS)
        if diff:
            raise UserError(f"cannot resume {str(run_dir)!r}: its config differs in {', '.join(diff)} "
                            f"(saved {diff[0]}={old.get(diff[0])!r}); use the saved config or a new run.out")
    elif holds_run and not overwrite:
        raise UserError(f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it, "
                        "--overwrite to replace it, or choose another --run.out")


def _rewind_run_dir(run_dir: Path, step: int) -> None:
    """Resuming from the checkpoint of ``step``: drop what a killed run logged after it (and a line cut
    in half by the kill), so metrics.jsonl ends as the uninterrupted run's did; clear stale temp files."""
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        keep = []
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                keep.append(line + "\n")
        tmp = metrics.with_name(f".metrics.jsonl.tmp{os.getpid()}")
        tmp.write_text("".join(keep))
        os.replace(tmp, metrics)
    checkpoint.remove_stale_temps(run_dir)


def _snapshot(model: torch.nn.Module, state) -> tuple:
    """What a forward pass changes besides the weights: BN running statistics and the algorithm's state."""
    bufs = [b.detach().clone() for b in model.buffers()]
    st = {k: v.detach().clone() for k, v in state.state_dict().items()} if state is not None else None
    return bufs, st


@torch.no_grad()
def _restore(model: torch.nn.Module, state, snap: tuple) -> None:
    for b, saved in zip(model.buffers(), snap[0]):
        b.copy_(saved)
    if state is not None:
        state.load_state_dict(snap[1])


def make_optimizer(o, groups: list[dict]) -> torch.optim.Optimizer:
    """optim.name: SGD (momentum, Nesterov) or AdamW (decoupled weight decay); the loop sets the lr each step."""
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, foreach=True)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, foreach=True)


def _param_groups(modules: list, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-D tensors), as FixMatch/USB do.
    Trainable parameters of an algorithm's state (ReMixMatch's rotation head, ABC's auxiliary
    classifier) are optimised with the model's; frozen ones (an EMA teacher) are not."""
    decay, no_decay = [], []
    for mod in modules:
        for p in mod.parameters() if mod is not None else ():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, rt: Runtime, mean, std, batch_size: int,
             predict=None) -> dict:
    """Top-1, balanced accuracy, per-class recall/precision, loss and confusion matrix. x uint8 (N,C,H,W).
    ``predict(model, x) -> logits`` replaces ``model(x).logits`` (an algorithm's own inference, e.g. ABC's head)."""
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, len(x), batch_size):
        xb = rt.to_input(to_float(x[i:i + batch_size].to(rt.device), mean, std))
        yb = y[i:i + batch_size].to(rt.device)
        with rt.autocast():
            logits = (model(xb).logits if predict is None else predict(model, xb)).float()  # (b, K)
        loss_sum += torch.nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
    model.train(was_training)
    num_classes = model.head.out_features
    cm = confusion_matrix(y.numpy(), torch.cat(preds).numpy(), num_classes)
    out = classification_metrics(cm)
    out["loss"] = loss_sum / max(1, len(x))
    out["confusion"] = cm.tolist()
    return out


@torch.no_grad()
def embedding_probe(model, views: list, rt: Runtime, batch_size: int) -> dict:
    """Alignment and uniformity (Wang & Isola 2020, losses.alignment / uniformity) of the model's
    L2-normalised features on two fixed views (float (N, C, H, W) each) of the same images: how close
    the two views of an image land, and how evenly the images spread over the sphere. What SimCLR
    optimises, measurable whatever the classifier head knows (train.probe_images)."""
    was_training = model.training
    model.eval()
    feats = []
    for v in views:
        parts = []
        for i in range(0, len(v), batch_size):
            with rt.autocast():
                parts.append(model(rt.to_input(v[i:i + batch_size])).features.float())  # (b, D)
        feats.append(torch.cat(parts))  # (N, D)
    model.train(was_training)
    return {"alignment": float(losses.alignment(*feats)), "uniformity": float(losses.uniformity(feats[0]))}


def _stalled(best: dict, step: int, cfg: Config) -> bool:
    """Early stopping: train.patience regular evaluations since the one that made best.pt. A pure
    function of the checkpointed ``best`` and the step, so a resumed early-stopped run stays stopped."""
    e = cfg.train.eval_every
    return cfg.train.patience > 0 and "step" in best and step // e - best["step"] // e >= cfg.train.patience


def train(cfg: Config, arrays: dict | None = None, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Run (or resume) one training run described by ``cfg``; returns the final metrics. One process per run
    directory: a second train / --resume on a directory another process is training in fails at once."""
    lock = RunLock(Path(cfg.run.out))
    try:
        return _train(cfg, arrays, resume, overwrite, lock)
    except RuntimeError as e:
        if dist.communication_failed(e):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise LostRank(f"lost contact with another process of this job ({first}); it stops here: once every "
                           f"rank can run again, continue with --resume --run.out={cfg.run.out}") from None
        raise
    finally:
        lock.release()


def _train(cfg: Config, arrays: dict | None, resume: bool, overwrite: bool, lock: RunLock) -> TrainResult:
    rt = setup_runtime(cfg.run)
    dd = rt.dist
    if cfg.train.batch_size % dd.world or (cfg.train.batch_size * cfg.train.mu) % dd.world:
        raise UserError(f"train.batch_size={cfg.train.batch_size} (and mu x batch_size) must divide over "
                        f"{dd.world} processes: the batch is global, each rank takes an equal share")
    ds, split = prepare_data(cfg, arrays)
    K, alg = ds.num_classes, cfg.algorithm
    model = build_model(cfg.model, K, ds.channels, ds.image_size)  # also loads model.init_from
    # identical initial weights on every rank; then each rank its own stream of dropout masks etc.
    torch.manual_seed(int(np.random.SeedSequence([cfg.run.seed, dd.rank, 7]).generate_state(1)[0]))
    if alg.views_u and cfg.train.mu < 1:
        raise UserError(f"algorithm {alg.name!r} needs unlabelled data: set train.mu >= 1")
    if alg.views_u and len(split.unlabelled) == 0 and ds.extra_x is None:
        raise UserError(f"algorithm {alg.name!r} needs unlabelled data but the split leaves none (data.m1=0 and "
                        f"{ds.name} has no separate unlabelled set): raise data.m1, or for STL-10 put unlabeled_X.bin "
                        "beside the labelled files")
    if cfg.train.patience and not cfg.data.val_per_class:
        raise UserError(f"train.patience={cfg.train.patience} (early stopping) needs a validation hold-out: set "
                        "data.val_per_class >= 1 (stopping on the test set would tune on it)")
    run_dir = Path(cfg.run.out)
    what = "resume" if resume else "train in"
    if dd.main:
        lock.check(what)
    _check_run_dir(run_dir, cfg, resume, overwrite)
    fingerprint = data_fingerprint(ds)
    if resume:
        _check_data(run_dir, fingerprint, cfg.run.allow_data_change)
    dist.barrier()  # every rank has checked the directory before rank 0 writes into it

    # ---- everything validated: from here on the run directory is ours (rank 0 alone writes) ----
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(what)  # two commands that both passed the checks: the second stops here, before writing
        if not resume:
            for f in RUN_FILES:
                (run_dir / f).unlink(missing_ok=True)
            checkpoint.write_text(run_dir / "config.yaml", to_yaml(cfg))
            checkpoint.write_text(run_dir / "split.json", json.dumps({**split.manifest(ds.train_y, cfg.run.seed, K),
                                                                      "data_fingerprint": fingerprint}))
    dist.barrier()

    model = rt.prepare_model(model)
    # BN running-statistics warm-up: a cumulative average (PyTorch's momentum=None) for the first 1/m
    # steps, then the EMA with momentum m; i.e. momentum_t = max(m, 1/(t+1)). FixMatch's m = 0.001 is
    # tuned for 2^20 steps; without this, runs of a few thousand steps would evaluate with running
    # statistics still mostly at their initial values (mean 0, variance 1). The attribute changes once,
    # so torch.compile recompiles at most once for it.
    bns = [(m, m.momentum) for m in model.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None]
    ema = ModelEMA(model, cfg.optim.ema, cfg.optim.ema_warmup) if cfg.optim.ema > 0 else None
    eval_model = ema.module if ema is not None else model
    labelled_counts = np.bincount(ds.train_y[split.labelled], minlength=K)
    ctx = Context(K, labelled_counts, model.num_features, cfg.train.steps, rt.device, cfg.optim.ema,
                  cfg.optim.ema_warmup)
    state = alg.init_state(model, ctx)
    if state is not None:
        state = state.to(rt.device)
    # an algorithm's own inference (ABC's balanced head), told whether it is given the EMA copy
    predict = (lambda m, xb: alg.predict(m, xb, state, ema=ema is not None)) if hasattr(alg, "predict") else None
    opt = make_optimizer(cfg.optim, _param_groups([model, state], cfg.optim.weight_decay))
    # DDP syncs the model's gradients; an algorithm's own trainable parameters (rotation head) and its
    # float buffers (running distributions) are averaged over ranks by hand so every rank agrees.
    net = model
    state_params = [p for p in (state.parameters() if state is not None else ()) if p.requires_grad]
    state_buffers = [b for b in (state.buffers() if state is not None else ()) if b.is_floating_point()]
    if dd.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if cfg.run.compile:  # the training forward only; EMA, evaluation and checkpoints use the plain model
        net = torch.compile(net)
    lr_at = LR_SCHEDULES[cfg.optim.schedule]

    # ---- data: uint8 tensors in memory; unlabelled = train[unlabelled] + extra (hidden label -1), the extra
    # images read per batch where they lie (in memory, memory-mapped, or a pool's cache file on disk) ----
    train_x = torch.from_numpy(ds.train_x)
    x_l_all = train_x[torch.from_numpy(split.labelled)]
    y_l_all = torch.from_numpy(ds.train_y[split.labelled]).long()
    x_u_all = Unlabelled(train_x[torch.from_numpy(split.unlabelled)], ds.extra_x)
    y_u_hidden = torch.from_numpy(ds.train_y[split.unlabelled]).long()
    if ds.extra_x is not None:
        y_u_hidden = torch.cat([y_u_hidden, torch.full((len(ds.extra_x),), -1, dtype=torch.long)])
    B, U = cfg.train.batch_size, cfg.train.batch_size * cfg.train.mu
    stream_l = IndexStream(len(x_l_all), B, cfg.run.seed, salt=1)
    stream_u = IndexStream(len(x_u_all), U, cfg.run.seed, salt=2) if alg.views_u else None
    d = cfg.data
    hflip = ds.hflip  # load_dataset already applied data.hflip when set
    # CTAugment (ReMixMatch): the strong view's policy is learned from how well the EMA model predicts
    # labelled images under uniformly random policies (a probe batch every step).
    # FixMatch's reference appends a cutout to its CTA strong views, ReMixMatch's does not (cta_cutout)
    cta = CTAugment(cutout=getattr(alg, "cta_cutout", True)).to(rt.device) if d.strong == "ctaugment" else None
    view_fns = {
        "weak": make_view(d.weak, hflip=hflip, pad=d.crop_pad, n=d.randaugment_n, cutout_frac=d.cutout),
        "strong": (lambda x, gen: cta(weak(x, gen, hflip=hflip, pad=d.crop_pad), gen)) if cta is not None else
        make_view(d.strong, hflip=hflip, pad=d.crop_pad, n=d.randaugment_n, cutout_frac=d.cutout),
        "simclr": lambda x, gen: simclr_view(x, gen, hflip=hflip, scale=(d.simclr_crop_min, 1.0), s=d.simclr_strength),
    }
    mean, std = ds.mean, ds.std
    test_x, test_y = torch.from_numpy(ds.test_x), torch.from_numpy(ds.test_y).long()
    val_idx = torch.from_numpy(split.val)
    val_x, val_y = train_x[val_idx], torch.from_numpy(ds.train_y[split.val]).long()
    has_test = len(test_x) > 0  # without a test set every figure is a validation figure, and says so
    if not has_test and dd.main:
        print(f"semisup: {ds.name} has no test set: every accuracy of this run is measured on the validation hold-out "
              f"({len(val_x)} labelled images not trained on), and best.pt is chosen on it too", file=sys.stderr)
    probe = None  # train.probe_images: two SimCLR views of the first test images, fixed for the whole run
    if cfg.train.probe_images:
        g_probe = torch.Generator().manual_seed(cfg.run.seed)
        x_probe = (test_x if has_test else val_x)[:cfg.train.probe_images].to(rt.device)
        probe = [to_float(view_fns["simclr"](x_probe, g_probe), mean, std) for _ in range(2)]  # 2 x (N, C, H, W)

    def views(x: torch.Tensor, names: tuple, gen: torch.Generator) -> dict:
        # view name "weak", "strong", "simclr", or "weak2"/"strong_3"/"simclr2": the prefix picks the augmentation
        kind = lambda n: next((k for k in ("strong", "simclr") if n.startswith(k)), "weak")  # noqa: E731
        return {n: rt.to_input(to_float(view_fns[kind(n)](x, gen), mean, std)) for n in names}

    def make_batch(step: int) -> tuple[Batch, torch.Tensor | None]:
        seq = [cfg.run.seed, step] + ([dd.rank] if dd.enabled else [])  # rank 0 of 1 = the single process
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seq).generate_state(1)[0]))
        il = torch.from_numpy(stream_l.batch(step, dd.rank, dd.world))
        raw_l, y_l = x_l_all[il].to(rt.device), y_l_all[il].to(rt.device)  # uint8 (B, C, H, W), (B,)
        batch = Batch(views(raw_l, alg.views_l, gen), y_l, step=step)
        hidden = None
        if stream_u is not None:
            iu = torch.from_numpy(stream_u.batch(step, dd.rank, dd.world))
            batch.x_u = views(x_u_all.take(iu).to(rt.device), alg.views_u, gen)
            hidden = y_u_hidden[iu].to(rt.device)
        if cta is not None:
            probe_cta(raw_l, y_l, gen)
        return batch, hidden

    @torch.no_grad()
    def probe_cta(raw_l: torch.Tensor, y_l: torch.Tensor, gen: torch.Generator) -> None:
        # the references probe weakly augmented labelled images (flip + crop), as the strong views start from
        x_probe, policy = cta.probe(weak(raw_l, gen, hflip=hflip, pad=d.crop_pad), gen)  # uint8, (B, depth, 2)
        was = eval_model.training
        eval_model.eval()
        with rt.autocast():
            probs = torch.softmax(eval_model(rt.to_input(to_float(x_probe, mean, std))).logits.float(), -1)
        eval_model.train(was)
        cta.update(policy, probs, y_l)
        dist.all_reduce_([cta.weights])

    meta = {"dataset": ds.name, "num_classes": K, "model": cfg.model.name, "algorithm": alg.name,
            "channels": ds.channels, "image_size": ds.image_size, "classes": list(ds.classes),
            "mean": list(mean), "std": list(std), "fit": ds.fit}

    # ---- resume: last.pt (last.prev.pt if last.pt is damaged or missing); none at all -> step 0 ----
    start, best, train_seconds, skipped = 0, {"score": -math.inf}, 0.0, 0
    ckpt, ckpt_path = checkpoint.load_latest(run_dir, missing_ok=True) if resume else (None, None)
    if ckpt is not None:
        checkpoint.check_meta(ckpt, meta, ckpt_path)
        try:
            model.load_state_dict(ckpt["model"])
            if ema is not None:
                ema.module.load_state_dict(ckpt["ema"])
            if state is not None:
                state.load_state_dict(ckpt["alg_state"])
            if cta is not None:
                cta.load_state_dict(ckpt["cta"])
            opt.load_state_dict(ckpt["optimizer"])
            rt.load_state_dict(ckpt["runtime"])
            start, best, train_seconds = ckpt["step"], ckpt["best"], ckpt["train_seconds"]
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise UserError(f"checkpoint {str(ckpt_path)!r} does not match this model/dataset/algorithm: "
                            f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
        skipped = ckpt.get("skipped_steps", 0)
    if resume and dd.main:  # the checkpoint is good: from here on the directory may change
        if ckpt is None:
            print(f"semisup: warning: {str(run_dir)!r} holds no checkpoint (stopped before the first one); "
                  "starting it from step 0", file=sys.stderr)
            if not (run_dir / "split.json").exists():
                checkpoint.write_text(run_dir / "split.json", json.dumps(
                    {**split.manifest(ds.train_y, cfg.run.seed, K), "data_fingerprint": fingerprint}))
        elif ckpt_path.name != "last.pt":
            # last.pt is damaged: the next save would rotate it onto last.prev.pt, the good one
            (run_dir / "last.pt").unlink(missing_ok=True)
        _rewind_run_dir(run_dir, start)
    dist.barrier()

    def save(step: int, seconds: float, path: str = "last.pt") -> None:
        if not dd.main:
            return
        checkpoint.save({
            "step": step, "model": model.state_dict(), "ema": ema.module.state_dict() if ema else None,
            "optimizer": opt.state_dict(), "alg_state": state.state_dict() if state is not None else None,
            "cta": cta.state_dict() if cta is not None else None,
            "runtime": rt.state_dict(), "best": best, "train_seconds": seconds, "skipped_steps": skipped,
            "meta": meta,
            # the training statistics gathered since the last evaluation, so that the next record of a
            # resumed run averages over the same steps as the uninterrupted run's
            "interval": {"n_since": n_since, "sums": {k: v.detach().cpu() for k, v in sums.items()},
                         "tracker": {k: getattr(tracker, k).cpu() for k in TRACKER_FIELDS},
                         "trackers": {n: {k: getattr(t, k).cpu() for k in TRACKER_FIELDS}
                                      for n, t in trackers.items()}},
        }, run_dir / path)

    writer = rt.summary_writer(run_dir) if cfg.run.tensorboard and dd.main else None
    tracker = PseudoLabelTracker(K, rt.device)
    trackers: dict[str, PseudoLabelTracker] = {}  # stats "pseudo_label_<name>" (e.g. DASO's two classifiers), unmasked
    sums: dict[str, torch.Tensor] = {}
    n_since, images, last_eval, step_times, data_times = 0, 0, None, [], []
    if ckpt is not None and ckpt.get("interval"):
        iv = ckpt["interval"]
        n_since, sums = iv["n_since"], {k: v.to(rt.device) for k, v in iv["sums"].items()}
        for k in TRACKER_FIELDS if dd.main else ():  # counts are summed over ranks at each evaluation
            getattr(tracker, k).copy_(iv["tracker"][k])
        for n, saved in iv.get("trackers", {}).items():
            trackers[n] = PseudoLabelTracker(K, rt.device)
            for k in TRACKER_FIELDS if dd.main else ():
                getattr(trackers[n], k).copy_(saved[k])
    del ckpt  # its tensors are loaded; do not hold a second copy of the weights for the whole run
    stop = {"signal": None}
    old_handlers = {s: signal.signal(s, lambda sig, _f: stop.update(signal=sig))
                    for s in (signal.SIGTERM, signal.SIGINT)}
    bar = rt.progress(cfg.train.steps, start, enabled=cfg.run.progress and dd.main)
    skip_bad, run_of_skips = cfg.train.nonfinite == "skip", 0
    t0 = time.perf_counter()
    model.train()
    step = start
    stalled = _stalled(best, start, cfg)  # a resumed run that had stopped early stays stopped
    try:
        while step < cfg.train.steps and not stalled:
            t_step = time.perf_counter()
            # the step's other randomness (dropout, an algorithm's masks) is a pure function of (seed, step,
            # rank) too, like its batch: a resumed run, every rank of it, continues the same streams
            torch.manual_seed(int(np.random.SeedSequence([cfg.run.seed, step, dd.rank, 11]).generate_state(1)[0]))
            with record_function("semisup.data"):
                batch, hidden = make_batch(step)
            data_times.append(time.perf_counter() - t_step)  # sampling + augmentation (+ CTAugment probe)
            lr = cfg.optim.lr * lr_at(step, cfg.train.steps, cfg.optim.warmup_steps)
            for m, base in bns:
                want = None if step + 1 < 1.0 / base else base
                if m.momentum != want:
                    m.momentum = want
            for g in opt.param_groups:
                g["lr"] = lr
            snap = _snapshot(model, state) if skip_bad else None
            with rt.autocast(), record_function("semisup.forward"):  # the forward pass and the losses
                loss, stats = alg.step(net, batch, state, step / cfg.train.steps)
            if dist.any_rank(not bool(torch.isfinite(loss)), rt.device):  # every rank stops or skips alike
                terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in (("loss", loss), *stats.items())
                                  if k.startswith("loss") and torch.is_tensor(v) and v.numel() == 1)
                if not skip_bad:
                    raise UserError(f"non-finite loss at step {step} ({terms}); stopped, {str(run_dir)!r} keeps "
                                    "the last good checkpoint; lower optim.lr, set run.amp=off, or resume with "
                                    "--train.nonfinite=skip to skip such steps")
                _restore(model, state, snap)  # the forward pass may have put NaN into BN statistics
                run_of_skips += 1
                broken = not all(bool(torch.isfinite(p).all()) for p in model.parameters())
                if broken or run_of_skips >= MAX_CONSECUTIVE_SKIPS:
                    why = "the weights themselves are non-finite" if broken else \
                        f"so was every one of the last {run_of_skips} steps"
                    raise UserError(f"non-finite loss at step {step} ({terms}) and {why}: skipping steps cannot "
                                    f"recover; {str(run_dir)!r} keeps the last good checkpoint; lower optim.lr and "
                                    "start again")
                skipped += 1
                if dd.main and skipped <= MAX_SKIP_WARNINGS:
                    more = "; further skips are only counted (skipped_steps in metrics.jsonl)" \
                        if skipped == MAX_SKIP_WARNINGS else ""
                    print(f"semisup: warning: non-finite loss at step {step} ({terms}); step skipped "
                          f"(train.nonfinite=skip){more}", file=sys.stderr)
            else:
                run_of_skips = 0
                opt.zero_grad(set_to_none=True)
                with record_function("semisup.backward"):  # backward + all-reduce + optimizer step
                    rt.backward_step(loss, opt, before_step=lambda: dist.all_reduce_(
                        [p.grad for p in state_params if p.grad is not None]))
                    dist.all_reduce_(state_buffers)
                if ema is not None:
                    with record_function("semisup.ema"):
                        ema.update(model, step)
                pseudo, mask = stats.pop("pseudo_label", None), stats.pop("mask", None)
                if pseudo is not None and hidden is not None:
                    tracker.update(pseudo, mask, hidden)
                for k in [k for k in stats if k.startswith("pseudo_label_")]:  # other classifiers' labels (U,)
                    other, n = stats.pop(k), k[len("pseudo_label_"):]
                    if hidden is not None:
                        if n not in trackers:
                            trackers[n] = PseudoLabelTracker(K, rt.device)
                        trackers[n].update(other, torch.ones_like(other, dtype=torch.float32), hidden)
                with torch.no_grad():
                    for k, v in (("loss", loss), *stats.items()):
                        sums[k] = sums.get(k, 0.0) + v.detach().float()
                n_since += 1
            step_images = sum(len(v) for v in batch.x_l.values()) + sum(len(v) for v in batch.x_u.values())
            images += step_images * dd.world  # every rank processed an equal share
            step_times.append(time.perf_counter() - t_step)  # CPU ops are synchronous: a true step time
            step += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.4f}",
                                **({"acc": f"{last_eval:.4f}"} if last_eval is not None else {}))
            timed_out = cfg.train.max_minutes > 0 and (time.perf_counter() - t0) / 60 > cfg.train.max_minutes
            # stop (time limit or a signal on any rank): every rank must stop at the same step
            halt = dist.any_rank(timed_out or bool(stop["signal"]), rt.device)
            regular = step % cfg.train.eval_every == 0 or step == cfg.train.steps
            is_eval = regular or halt  # a stop evaluates too, as an extra record
            if is_eval and dd.enabled:  # training statistics of every rank, then rank 0 evaluates
                keys = sorted(sums)
                dist.all_reduce_([sums[k] for k in keys])
                dist.all_reduce_([tracker.seen, tracker.passed_true, tracker.correct_true, tracker.passed_pred,
                                  tracker.correct_pred, tracker.correct_all], op="sum")
                for t in trackers.values():
                    dist.all_reduce_([getattr(t, k) for k in TRACKER_FIELDS], op="sum")
            if is_eval and dd.main:
                elapsed = time.perf_counter() - t0
                record = {"step": step, "lr": lr, "train_seconds": train_seconds + elapsed,
                          "train": {k: float(v) / n_since for k, v in sums.items()}}
                if hidden is not None:
                    record["train"].update(tracker.summary())
                    record["train"].update({f"pseudo_label_{n}": t.summary() for n, t in trackers.items()})
                if has_test:
                    record["test"] = evaluate(eval_model, test_x, test_y, rt, mean, std, cfg.train.eval_batch_size,
                                              predict)
                if len(val_x):
                    record["val"] = evaluate(eval_model, val_x, val_y, rt, mean, std, cfg.train.eval_batch_size,
                                             predict)
                part = eval_part(record)  # "val" when there is no test set
                if probe is not None:
                    record[part].update(embedding_probe(eval_model, probe, rt, cfg.train.eval_batch_size))
                for p in ("test", "val"):  # head / medium / tail by labelled count (long-tailed protocols)
                    if p in record:
                        g = group_metrics(record[p]["per_class_recall"], labelled_counts)
                        record[p].update({k: (None if v != v else v) for k, v in g.items()  # nan -> null
                                             if k in ("head_recall", "medium_recall", "tail_recall",
                                                      "minority_class", "minority_recall")})
                last_eval = record[part]["top1"]
                scored = record["val" if len(val_x) else "test"]
                score = scored["top1"] if cfg.train.select_on == "top1" else -scored["loss"]  # higher is better
                record["images_per_s"] = images / elapsed if elapsed > 0 else 0.0
                record["step_seconds_median"] = float(np.median(step_times)) if step_times else 0.0
                record["data_seconds_median"] = float(np.median(data_times)) if data_times else 0.0
                record["step_images"] = step_images * dd.world
                if skip_bad:
                    record["skipped_steps"] = skipped  # since the run began
                checkpoint.append_line(run_dir / "metrics.jsonl", json.dumps(record) + "\n")
                if writer is not None:
                    for k, v in _flat({p: record[p] for p in ("train", "test", "val") if p in record}).items():
                        if isinstance(v, (int, float)):
                            writer.add_scalar(k, v, step)
                    writer.add_scalar("lr", lr, step)
                    writer.flush()
                if score > best["score"]:
                    best = {"score": score, "step": step, "selected_on": "val" if len(val_x) else "test",
                            "metric": cfg.train.select_on,
                            f"{part}_top1": record[part]["top1"], f"{part}_balanced_acc": record[part]["balanced_acc"]}
                    save(step, train_seconds + elapsed, "best.pt")
            if regular:  # not after a stop's extra record: the checkpoint carries the interval on, so the
                # resumed run's next record averages the same steps
                sums, n_since, step_times, data_times = {}, 0, [], []
                tracker.reset()
                for t in trackers.values():
                    t.reset()
            if is_eval or (cfg.train.save_every and step % cfg.train.save_every == 0):
                save(step, train_seconds + time.perf_counter() - t0)
                dist.barrier()
            # early stopping: rank 0 scored the evaluation; every rank must stop at the same step
            stalled = regular and cfg.train.patience > 0 and dist.any_rank(dd.main and _stalled(best, step, cfg),
                                                                            rt.device)
            if halt or stalled:
                break
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - t0
    train_seconds += elapsed
    dist.barrier()
    final = _last_record(run_dir)
    part = eval_part(final)
    summary = {"steps": step, "train_seconds": train_seconds, "images_per_s": images / elapsed if elapsed else 0.0,
               # without a test set the figures are validation figures: named val_*, and "evaluated_on" says so
               "evaluated_on": part,
               "final": {"step": final.get("step"), f"{part}_top1": final[part]["top1"],
                         f"{part}_balanced_acc": final[part]["balanced_acc"]},
               "best": best, "stopped_early": step < cfg.train.steps, "skipped_steps": skipped,
               "early_stopped": stalled and step < cfg.train.steps,  # train.patience ended it
               "allocator": "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "default",
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
               "threads": torch.get_num_threads(), "amp": str(rt.amp_dtype), "device": str(rt.device),
               "fused_bn": rt.fused_bn}
    if dd.main:
        summary.update(_apr_summary(run_dir, best, cfg))
        checkpoint.write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    if stop["signal"] and step < cfg.train.steps:
        name = signal.Signals(stop["signal"]).name
        raise Stopped(f"stopped by {name} after step {step}; checkpoint {str(run_dir / 'last.pt')!r} written; "
                      f"continue with: semisup train --resume --run.out={run_dir}", stop["signal"])
    return TrainResult(run_dir, final, best, step, train_seconds, summary["images_per_s"])


def _apr_summary(run_dir: Path, best: dict, cfg: Config) -> dict:
    """APR, the average pass rate of the pseudo-labels: mean and std over the evaluations within
    train.apr_window x steps of the one that made best.pt (taken as convergence), and LER = that
    evaluation's test top-1 / APR mean (accuracy per unit of unlabelled data admitted by the mask: our
    reading of the ARL paper's learning efficiency). {} for runs without pseudo-labels."""
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "pass_rate" in r.get("train", {})]
    if not recs or "step" not in best:
        return {}
    c = min(range(len(recs)), key=lambda i: abs(recs[i]["step"] - best["step"]))
    half = int(cfg.train.apr_window * cfg.train.steps / cfg.train.eval_every)  # in evaluations
    mean, std = apr([r["train"]["pass_rate"] for r in recs], c, half)
    eff = ler(recs[c][eval_part(recs[c])]["top1"], mean)
    return {"apr": {"mean": mean, "std": std, "center_step": recs[c]["step"], "half_window_evals": half},
            "ler": None if eff != eff else eff}  # nan (nothing passed) -> null


def _last_record(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])
