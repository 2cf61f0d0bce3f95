"""Self-supervised pretraining and linear evaluation, as configurations of the one loop (train.py).

    semisup pretrain --method simclr [...]   algorithm simclr over the pretrain_simclr preset, then encoder.pt
    semisup linear-eval --encoder PATH [...]  supervised, frozen encoder (model.freeze_encoder), linear head
    semisup train --algorithm.name=supervised --model.init_from=PATH   fine-tuning (everything trains)

Why no second loop: pretraining then gets checkpoints, exact resume, DDP, metrics.jsonl and
TensorBoard from train.py. What the loop's evaluation measures during pretraining (top-1 of a head
that is never trained) is meaningless; ``train.probe_images`` adds the alignment and uniformity of the
features on fixed views of test images to every record instead (test.alignment, test.uniformity).

``encoder.pt`` holds the encoder weights of the final step (the EMA's when optim.ema > 0: the evaluated
weights), not best.pt's (chosen by that meaningless top-1), plus the run's model and data sections, so
that ``linear-eval`` builds the same network on the same data without repeating them. The projection
head (algorithm state) is not in it: the paper discards it after pretraining.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from . import checkpoint
from .config import Config
from .errors import ConfigError, UserError

# The preset (semisup/configs/NAME.yaml) each command puts below any --preset / --config and the command line:
# pretraining's recipe per method, and the linear protocol.
PRETRAIN_PRESETS = {"simclr": "pretrain_simclr"}
LINEAR_EVAL_PRESET = "linear_eval"
METHODS = tuple(PRETRAIN_PRESETS)


def encoder_config(path: str | Path) -> dict:
    """The model and data sections an encoder.pt was trained with ({} for other checkpoints or files
    that cannot be read: load_encoder then reports what is wrong with them)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"encoder checkpoint {str(p)!r} not found; pass the encoder.pt that `semisup pretrain` "
                        "wrote in its run directory")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception:  # a damaged file: load_encoder says so in the project's words
        return {}
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict):
        return {}
    model = {k: v for k, v in (cfg.get("model") or {}).items() if k not in ("init_from", "init_head", "freeze_encoder")}
    return {"model": model, "data": dict(cfg.get("data") or {})}


def export_encoder(run_dir: str | Path) -> Path:
    """Write RUN_DIR/encoder.pt from RUN_DIR/last.pt (atomically): {"model": encoder.* weights,
    "config": {"model", "data"}, "step", "meta"}; ``model.init_from`` loads it."""
    run_dir = Path(run_dir)
    ckpt = checkpoint.load(run_dir / "last.pt")
    weights = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    enc = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    out = run_dir / "encoder.pt"
    checkpoint.save({"model": enc, "config": {"model": saved["model"], "data": saved["data"]},
                     "step": ckpt["step"], "meta": ckpt["meta"]}, out, keep_previous=False)
    return out


def pretrain(cfg: Config, arrays: dict | None = None, resume: bool = False, overwrite: bool = False):
    """Train ``cfg`` (a self-supervised algorithm) with the loop, then export its encoder.
    Returns (TrainResult, path of encoder.pt; None on ranks other than 0, which write nothing)."""
    from .train import train  # late: train imports the whole stack, the CLI's --help should not wait for it

    if cfg.algorithm.name not in METHODS:
        raise ConfigError(f"semisup pretrain: algorithm {cfg.algorithm.name!r} is not a pretraining method; "
                          f"choose one of: {', '.join(METHODS)}")
    res = train(cfg, arrays, resume=resume, overwrite=overwrite)
    main = not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0
    return res, export_encoder(res.run_dir) if main else None
