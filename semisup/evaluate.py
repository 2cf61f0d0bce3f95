"""`semisup eval`: score a run's checkpoint on its dataset's test set or validation hold-out."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .algorithms import Context
from .algorithms.contract import own_predict
from .config import Config, from_dict, load_saved, replace
from .data.dataset import Dataset
from .errors import UserError
from .loop.evaluator import evaluate
from .loop.setup import prepare_data
from .models import build_model
from .runtime import Runtime, setup_runtime


@dataclass
class LoadedRun:
    """A checkpoint turned back into its model and data (what `semisup eval` and the report use)."""
    path: Path  # the checkpoint file
    ckpt: dict
    cfg: Config
    rt: Runtime
    ds: Dataset
    model: torch.nn.Module  # in eval mode, on rt.device


def load_checkpoint(target: str | Path, raw: bool = False, arrays=None) -> LoadedRun:
    """A run directory (best.pt, else last.pt) or a .pt file beside its config.yaml -> model + data.
    ``raw`` takes the trained weights instead of the EMA. Raises UserError for user-fixable problems."""
    path = Path(target)
    if not path.exists():
        raise UserError(f"{str(target)!r} does not exist; point semisup eval at a run directory or a checkpoint in one")
    if path.is_dir():
        if not (path / "config.yaml").exists():
            raise UserError(f"{str(target)!r} is not a run directory (no config.yaml in it); point semisup eval at "
                            "the directory a train command wrote (its run.out)")
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).exists()), None)
        if path is None:
            raise UserError(f"run directory {str(target)!r} holds no checkpoint yet (no best.pt or last.pt)")
    ckpt = checkpoint.load(path)  # a file that is not a checkpoint is named in the error
    cfg_file = path.parent / "config.yaml"
    if not cfg_file.exists():
        raise UserError(f"checkpoint {str(target)!r} has no config.yaml beside it in {str(path.parent)!r}; "
                        "semisup eval reads the run's config from the checkpoint's directory")
    cfg = from_dict(load_saved(cfg_file))
    cfg = replace(cfg, run={"progress": False, "tensorboard": False})
    rt = setup_runtime(cfg.run)
    ds, _ = prepare_data(cfg, arrays)
    checkpoint.check_meta(ckpt, {"dataset": ds.name, "num_classes": ds.num_classes, "classes": list(ds.classes),
                                 "channels": ds.channels, "image_size": ds.image_size, "model": cfg.model.name,
                                 "algorithm": cfg.algorithm.name}, path)
    # the checkpoint holds every weight: no encoder file (init_from) or weights file / download (pretrained) needed
    mcfg = dataclasses.replace(cfg.model, init_from=None, init_head=False, pretrained=False, freeze_encoder=False)
    model = rt.prepare_model(build_model(mcfg, ds.num_classes, ds.channels, ds.image_size))
    weights = ckpt["model"] if raw or ckpt.get("ema") is None else ckpt["ema"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"checkpoint {str(path)!r} does not match its config's model: "
                        f"{str(e).splitlines()[0]}") from None
    return LoadedRun(path, ckpt, cfg, rt, ds, model.eval())


def algorithm_predict(run: LoadedRun, raw: bool = False):
    """The algorithm's own inference ``predict(model, x) -> logits`` (ABC's balanced head) with its state
    rebuilt from the checkpoint, or None when the algorithm has none (evaluate then uses model(x).logits)."""
    alg = run.cfg.algorithm
    if not own_predict(alg):
        return None
    counts = json.loads((run.path.parent / "split.json").read_text())["counts"]["labelled"]
    ctx = Context(run.ds.num_classes, np.asarray(counts), run.model.num_features, run.cfg.train.steps,
                  run.rt.device, run.cfg.optim.ema)
    state = alg.init_state(run.model, ctx)
    try:
        state.load_state_dict(run.ckpt["alg_state"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"checkpoint {str(run.path)!r} holds no usable {alg.name} state: "
                        f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    state = state.to(run.rt.device).eval()
    ema = not raw and run.ckpt.get("ema") is not None  # which weights load_checkpoint loaded
    return lambda m, xb: alg.predict(m, xb, state, ema=ema)


def evaluate_checkpoint(target: str, split: str = "test", raw: bool = False, arrays=None) -> dict:
    run = load_checkpoint(target, raw, arrays)
    path, ds = run.path, run.ds
    if split == "val":
        manifest = json.loads((path.parent / "split.json").read_text())
        idx = np.asarray(manifest["val"], dtype=np.int64)
        if len(idx) == 0:
            raise UserError("this run has no validation hold-out (data.val_per_class=0); use --split test")
        x, y = torch.from_numpy(ds.train_x[idx]), torch.from_numpy(ds.train_y[idx]).long()
    elif len(ds.test_y) == 0:
        raise UserError(f"{ds.name} has no test set; this run's figures are validation figures: use --split val")
    else:
        x, y = torch.from_numpy(ds.test_x), torch.from_numpy(ds.test_y).long()
    out = evaluate(run.model, x, y, run.rt, ds.mean, ds.std, run.cfg.train.eval_batch_size,
                   algorithm_predict(run, raw))
    out.update({"checkpoint": str(path), "step": run.ckpt["step"], "split": split, "weights": "raw" if raw else "ema"})
    return out
