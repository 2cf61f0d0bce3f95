"""A trained run on new images: ``semisup.load(run_dir).predict(images)``; behind `semisup predict` and export.

Nothing here reads the training data: a run directory copied to another machine is enough. The model is
built from the run's config.yaml and the checkpoint's meta (classes, image size, channels, mean / std,
``fit``), and image files are decoded by :func:`semisup.data.images.read_image` with the run's size,
channels and fit, so a file gets exactly the pixels evaluation saw for the dataset's own images.

Numerics follow `semisup eval`: the run's ``run.amp`` and ``run.channels_last`` (bf16 autocast on a CPU
with native bf16 under ``amp=auto``), so a test folder predicted here scores what `semisup eval` reports.
``load(..., amp="off")`` gives float32 throughout, as the exported files compute.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .algorithms.contract import own_predict
from .errors import DataError, UserError

NEEDED_META = ("classes", "num_classes", "channels", "image_size", "mean", "std")
PNG_MODES = frozenset({"1", "L", "LA", "I;16", "P", "RGB", "RGBA"})  # PNG keeps these (TIFF the others)


def resolve_checkpoint(target: str | Path) -> Path:
    """A run directory (best.pt, else last.pt) or a .pt file in one -> the checkpoint file (UserError if none)."""
    path = Path(target)
    if not path.exists():
        raise UserError(f"{str(target)!r} does not exist; give a run directory (the run.out of a train command) "
                        "or a checkpoint in one")
    if path.is_dir():
        if not (path / "config.yaml").exists():
            raise UserError(f"{str(target)!r} is not a run directory (no config.yaml in it); give the directory a "
                            "train command wrote (its run.out)")
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).exists()), None)
        if path is None:
            raise UserError(f"run directory {str(target)!r} holds no checkpoint yet (no best.pt or last.pt)")
    if not (path.parent / "config.yaml").exists():
        raise UserError(f"checkpoint {str(target)!r} has no config.yaml beside it in {str(path.parent)!r}; the "
                        "run's config is read from the checkpoint's directory")
    return path


@dataclasses.dataclass
class LoadedModel:
    """A checkpoint as a model without data: what :class:`Predictor` and semisup.export build on."""
    path: Path  # the checkpoint file
    cfg: object  # semisup.config.Config of the run
    meta: dict  # the checkpoint's meta, "fit" filled ("stretch" before it was recorded)
    step: int
    weights: str  # "ema" or "raw"
    model: torch.nn.Module  # eval mode, float32, on the device asked for
    alg: object = None  # the algorithm when it has its own inference (ABC's, ACR's balanced head), else None
    alg_state: torch.nn.Module | None = None  # its state from the checkpoint, eval mode

    @property
    def head(self) -> str:
        """Which head gives the logits: "model", or the algorithm's name when it has its own."""
        return "model" if self.alg is None else self.alg.name

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Normalised float input (B, C, H, W) -> logits (B, K) of ``model`` (this one, or a copy of it), with
        the algorithm's head where it has one."""
        if self.alg is None:
            return model(x).logits
        return self.alg.predict(model, x, self.alg_state, ema=self.weights == "ema")


def load_model(target: str | Path, raw: bool = False, device: str | torch.device = "cpu") -> LoadedModel:
    """Checkpoint + config.yaml -> LoadedModel; user-fixable problems raise UserError (one line)."""
    from .config import from_dict, load_saved
    from .models import build_model

    path = resolve_checkpoint(target)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device {str(device)!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} asked for but no CUDA device is available; use cpu")
    ckpt = checkpoint.load(path)  # corrupt or foreign files are named in the error
    cfg = from_dict(load_saved(path.parent / "config.yaml"))
    meta = dict(ckpt.get("meta") or {})
    missing = [k for k in NEEDED_META if k not in meta]
    if missing:
        raise UserError(f"checkpoint {str(path)!r} does not record {', '.join(missing)} (written by an older semisup); "
                        "semisup eval, which reads the dataset, still works with it")
    meta.setdefault("fit", "stretch")
    checkpoint.check_meta(ckpt, {"model": cfg.model.name, "algorithm": cfg.algorithm.name}, path)
    # the checkpoint holds every weight: no encoder file (init_from) or download (pretrained) is needed
    mcfg = dataclasses.replace(cfg.model, init_from=None, init_head=False, pretrained=False, freeze_encoder=False)
    model = build_model(mcfg, meta["num_classes"], meta["channels"], meta["image_size"])
    use_raw = raw or ckpt.get("ema") is None
    try:
        model.load_state_dict(ckpt["model"] if use_raw else ckpt["ema"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {str(path)!r} does not match its config's model: "
                        f"{str(e).splitlines()[0]}") from None
    model = model.to(dev).eval()
    alg = cfg.algorithm if own_predict(cfg.algorithm) else None
    state = _algorithm_state(alg, model, ckpt, path, meta["num_classes"], cfg, dev) if alg is not None else None
    return LoadedModel(path, cfg, meta, int(ckpt["step"]), "raw" if use_raw else "ema", model, alg, state)


def _algorithm_state(alg, model, ckpt: dict, path: Path, num_classes: int, cfg, device) -> torch.nn.Module:
    """The state of an algorithm with its own inference, from the checkpoint (as
    semisup.evaluate.algorithm_predict builds it, without the dataset). The labelled counts only shape the
    state's buffers, which the checkpoint then overwrites; split.json gives them when it is there."""
    from .algorithms import Context

    counts = np.ones(num_classes, np.int64)
    split = path.parent / "split.json"
    if split.exists():
        try:
            counts = np.asarray(json.loads(split.read_text())["counts"]["labelled"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged manifest: the checkpoint's buffers are what counts
    ctx = Context(num_classes, counts, model.num_features, cfg.train.steps, device, cfg.optim.ema)
    state = alg.init_state(model, ctx)
    try:
        state.load_state_dict(ckpt["alg_state"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"checkpoint {str(path)!r} holds no usable {alg.name} state: "
                        f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:200]}") from None
    return state.to(device).eval()


class _Named(io.BytesIO):
    """An encoded in-memory image that read_image's error message names readably."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self._name = name

    def __str__(self) -> str:
        return self._name


def _encoded(im, name: str) -> _Named:
    """A PIL image -> lossless PNG (TIFF for modes PNG lacks) bytes with its EXIF, so that read_image applies
    the one decoding policy (orientation, mode, fit) to it as to a file."""
    buf = io.BytesIO()
    exif = im.getexif()
    kw = {"exif": exif} if len(exif) else {}
    try:
        if im.mode in PNG_MODES:
            im.save(buf, format="PNG", compress_level=0, **kw)
        else:
            im.save(buf, format="TIFF", **kw)
    except Exception as e:  # an image PIL cannot even write losslessly
        raise DataError(f"cannot use {name} (mode {im.mode}; {type(e).__name__}: {e}); convert it to RGB "
                        "first") from None
    return _Named(buf.getvalue(), name)


def _is_pil(x) -> bool:
    from PIL import Image

    return isinstance(x, Image.Image)


class Predictor:
    """A run's model on new images. Make one with :func:`load`.

    ``images`` (for :meth:`logits` and :meth:`predict`) is one of
      - a path or a list of paths (str / Path) to image files, decoded like the dataset's images;
      - a PIL image or a list of them (EXIF orientation, mode and size handled as for files);
      - a uint8 numpy array (N, H, W, C), (N, C, H, W) or (N, H, W) (C = 1 or 3; 4 = RGBA for (N, H, W, C));
      - a uint8 torch tensor (N, C, H, W).
    Arrays already ``image_size`` x ``image_size`` with the model's channel count are used as they are;
    others go through the same policy as files (resize by the run's ``fit``, grey <-> RGB). Pixels are
    0..255, RGB order. Images are processed ``batch_size`` at a time (default: the run's
    train.eval_batch_size); paths are decoded batch by batch, so any number of files fits in memory.

    Attributes: ``classes`` (list of class names, index = class id), ``image_size``, ``channels``, ``mean``,
    ``std``, ``fit``, ``weights`` ("ema" or "raw"), ``step``, ``head`` ("model" or the algorithm whose own
    inference head is used, e.g. "abc"), ``checkpoint`` (the file), ``model`` (the torch module, eval mode).
    """

    def __init__(self, loaded: LoadedModel, rt):
        from .data.transforms import to_float

        self._loaded, self.rt, self._to_float = loaded, rt, to_float
        m = loaded.meta
        self.meta = m
        self.classes: list[str] = list(m["classes"])
        self.image_size: int = int(m["image_size"])
        self.channels: int = int(m["channels"])
        self.mean, self.std = tuple(m["mean"]), tuple(m["std"])
        self.fit: str = m["fit"]
        self.weights, self.step, self.head = loaded.weights, loaded.step, loaded.head
        self.checkpoint, self.cfg, self.model = loaded.path, loaded.cfg, loaded.model
        self.batch_size = int(loaded.cfg.train.eval_batch_size)

    def __repr__(self) -> str:
        return (f"Predictor({str(self.checkpoint)!r}, {len(self.classes)} classes, {self.channels}x{self.image_size}"
                f"x{self.image_size}, {self.weights} weights, head={self.head})")

    # -- input -> uint8 (b, C, S, S) batches --
    def _read(self, item, i: int) -> np.ndarray:
        from .data.images import read_image

        S, C = self.image_size, self.channels
        if isinstance(item, (str, os.PathLike)):
            return read_image(os.fspath(item), S, C, self.fit)
        if _is_pil(item):
            return read_image(_encoded(item, f"PIL image {i} of the input"), S, C, self.fit)
        raise UserError(f"image {i} of the input is a {type(item).__name__}; give paths, PIL images, a uint8 numpy "
                        "array (N, H, W, C) / (N, C, H, W) / (N, H, W) or a uint8 tensor (N, C, H, W)")

    def _conform(self, x: torch.Tensor, first: int) -> torch.Tensor:
        """uint8 (b, c, h, w) -> (b, C, S, S): as it is when it already fits, else image by image through PIL."""
        from PIL import Image

        S, C = self.image_size, self.channels
        if x.shape[1:] == (C, S, S):
            return x
        hwc = x.cpu().permute(0, 2, 3, 1).numpy()  # (b, h, w, c): PIL reads c = 1 (as h x w), 3, 4 as L, RGB, RGBA
        ims = [Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a)) for a in hwc]
        return torch.from_numpy(np.stack([self._read(im, first + j) for j, im in enumerate(ims)]))

    def _array(self, images) -> torch.Tensor:
        """A whole-batch numpy array or tensor -> uint8 (N, c, h, w), channels first."""
        is_tensor = isinstance(images, torch.Tensor)
        if images.dtype not in (np.uint8, torch.uint8):
            raise UserError(f"images must be uint8 (pixels 0..255), got {images.dtype}; for floats in [0, 1] pass "
                            "(x * 255).round() as uint8")
        shape = tuple(images.shape)
        x = images if is_tensor else torch.from_numpy(np.ascontiguousarray(images))
        if len(shape) == 3:  # (N, H, W) greyscale
            return x[:, None]
        if len(shape) == 4:
            if is_tensor and shape[1] in (1, 3, 4):
                return x
            if not is_tensor:
                if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3):
                    return x.permute(0, 3, 1, 2)
                if shape[1] in (1, 3):
                    return x
        want = "(N, C, H, W)" if is_tensor else "(N, H, W, C), (N, C, H, W) or (N, H, W)"
        raise UserError(f"an image array of shape {shape} is not a batch of images: give {want}, C = 1 or 3")

    def batches(self, images, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """``images`` (see the class docstring) -> uint8 (b, C, S, S) batches, the model's input before
        normalisation."""
        bs = int(batch_size or self.batch_size)
        if bs < 1:
            raise UserError(f"batch_size must be >= 1, got {bs}")
        if isinstance(images, (np.ndarray, torch.Tensor)):
            x = self._array(images)
            for i in range(0, len(x), bs):
                yield self._conform(x[i:i + bs], i)
            return
        items = [images] if isinstance(images, (str, os.PathLike)) or _is_pil(images) else list(images)
        for i in range(0, len(items), bs):
            yield torch.from_numpy(np.stack([self._read(it, i + j) for j, it in enumerate(items[i:i + bs])]))

    # -- output --
    @torch.no_grad()
    def logits_of(self, x: torch.Tensor) -> torch.Tensor:
        """One uint8 batch (b, C, S, S) -> float32 logits (b, K) on the CPU, as semisup eval computes them."""
        rt = self.rt
        xb = rt.to_input(self._to_float(x.to(rt.device), self.mean, self.std))  # (b, C, S, S)
        with rt.autocast():
            return self._loaded.forward(self.model, xb).float().cpu()

    def logits(self, images, batch_size: int | None = None) -> np.ndarray:
        """float32 (N, K) logits of ``images``; softmax gives the class probabilities."""
        out = [self.logits_of(x) for x in self.batches(images, batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, images, top_k: int = 1, batch_size: int | None = None) -> list[dict]:
        """One dict per image, in input order::

            {"class": "cat", "index": 3, "probability": 0.91, "top_k": [("cat", 0.91), ("dog", 0.05), ...]}

        ``class`` / ``index`` the most probable class, ``probability`` its softmax probability, ``top_k``
        the ``top_k`` most probable (class, probability) pairs, most probable first."""
        K = len(self.classes)
        if not 1 <= top_k <= K:
            raise UserError(f"top_k must be between 1 and the number of classes ({K}), got {top_k}")
        out = []
        for x in self.batches(images, batch_size):
            p, idx = torch.softmax(self.logits_of(x), dim=1).topk(top_k, dim=1)  # (b, k) each
            for pr, ix in zip(p.tolist(), idx.tolist()):
                out.append({"class": self.classes[ix[0]], "index": ix[0], "probability": pr[0],
                            "top_k": [(self.classes[j], q) for j, q in zip(ix, pr)]})
        return out


def load(run_dir_or_checkpoint: str | Path, raw: bool = False, device: str | torch.device = "cpu",
         amp: str | None = None) -> Predictor:
    """A :class:`Predictor` for a run directory (best.pt, else last.pt) or a checkpoint file beside its
    config.yaml. ``raw``: the trained weights instead of their EMA. ``device``: cpu, cuda, cuda:N. ``amp``:
    None follows the run's run.amp as `semisup eval` does; "off" computes in float32. The training data is
    not needed. Raises UserError (one line) for a missing or foreign directory or a damaged checkpoint."""
    from .config import RunConfig
    from .runtime import Runtime

    loaded = load_model(run_dir_or_checkpoint, raw=raw, device=device)
    run = loaded.cfg.run
    rc = RunConfig(**{**dataclasses.asdict(run), "device": str(device), "amp": amp or run.amp, "fused_bn": "off",
                      "compile": False, "progress": False, "tensorboard": False})
    rt = Runtime(rc)
    loaded.model = rt.prepare_model(loaded.model)
    return Predictor(loaded, rt)
