"""`semisup export`: a run's model as one self-contained file (TorchScript or ONNX) with the preprocessing in it.

The exported module takes images (B, C, H, W), RGB (or grey for a one-channel run), H = W = the run's
image_size, the batch dimension dynamic, and returns logits (B, K) float32; softmax gives the class
probabilities, class k is ``classes[k]`` of the metadata. The run's normalisation (mean / std) is inside,
computed as training and evaluation compute it (semisup.data.transforms.to_float), so callers only resize:

- TorchScript (``.ts``): uint8 pixels 0..255, or float pixels in [0, 1] (any float dtype); a scripted
  wrapper branches on the dtype around the traced float32 network.
- ONNX (``.onnx``): one input dtype per file, ``input="uint8"`` (default: what image decoders give, and
  what semisup's own pipeline feeds, so the file computes exactly semisup's numbers) or ``input="float"``
  (float32 in [0, 1]).

Resizing is not inside: bring images to image_size x image_size as the metadata's ``fit`` says (``crop``:
scale the shorter side to image_size with PIL's bilinear filter and keep the centre square; ``stretch``:
resize the whole image), as :func:`semisup.data.images.read_image` does.

An algorithm with its own inference head (ABC's and ACR's balanced classifier) is exported with that head,
as `semisup eval` and `semisup predict` use it; the metadata's ``head`` names it. Metadata: TorchScript
holds it as ``_extra_files["semisup.json"]`` and as attributes of the module (``classes``,
``image_size``, ``channels``, ``mean``, ``std``, ``fit``, ``input``); ONNX as metadata_props (the same JSON
under ``semisup.json``, and each fact under its own key). Exports run in float32 on the CPU and each file
is checked against PyTorch on random images before it is renamed into place.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UserError
from .inference import LoadedModel, load_model

FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
INPUTS = {"uint8": "uint8 pixels 0..255", "float": "float32 pixels in [0, 1]"}
TOLERANCE = 1e-4  # max |logit difference| allowed between the file and PyTorch (float32 both)


class Network(nn.Module):
    """Float pixels 0..255 (B, C, H, W) -> logits (B, K): to_float's normalisation, then the model (and the
    algorithm's own head where it has one)."""

    def __init__(self, loaded: LoadedModel):
        super().__init__()
        self.model = loaded.model
        self.state = loaded.alg_state  # a registered submodule, so its weights travel with the export
        self.alg, self.ema = loaded.alg, loaded.weights == "ema"
        m = torch.tensor(loaded.meta["mean"], dtype=torch.float64).view(1, -1, 1, 1)
        s = torch.tensor(loaded.meta["std"], dtype=torch.float64).view(1, -1, 1, 1)
        self.register_buffer("scale", (1 / (255 * s)).float())  # as to_float: float64, then cast
        self.register_buffer("shift", (-m / s).float())

    def forward(self, x: Tensor) -> Tensor:
        x = torch.addcmul(self.shift, x, self.scale)  # (B, C, H, W), as to_float computes it
        if self.alg is None:
            return self.model(x).logits.float()  # (B, K)
        return self.alg.predict(self.model, x, self.state, ema=self.ema).float()  # as LoadedModel.forward


class FromUint8(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float())


class FromUnit(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float() * 255.0)


class EitherDtype(nn.Module):
    """The TorchScript entry point: uint8 0..255 or float in [0, 1], the metadata as attributes (their
    TorchScript types inferred from the values: List[str], int, List[float], str)."""

    def __init__(self, net: nn.Module, meta: dict):
        super().__init__()
        self.net = net
        self.classes, self.image_size, self.channels = list(meta["classes"]), meta["image_size"], meta["channels"]
        self.mean, self.std = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
        self.fit, self.input = meta["fit"], meta["input"]

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            return self.net(x.float())
        return self.net(x.float() * 255.0)


def metadata(loaded: LoadedModel, input_desc: str) -> dict:
    from . import __version__

    m = loaded.meta
    return {"classes": list(m["classes"]), "num_classes": int(m["num_classes"]), "image_size": int(m["image_size"]),
            "channels": int(m["channels"]), "mean": [float(v) for v in m["mean"]],
            "std": [float(v) for v in m["std"]], "fit": m["fit"], "input": input_desc,
            "layout": "(B, C, H, W), " + ("RGB" if m["channels"] == 3 else "grey"),
            "output": "logits (B, K) float32; softmax gives probabilities; class k is classes[k]",
            "head": loaded.head, "weights": loaded.weights, "step": loaded.step, "model": m.get("model"),
            "algorithm": m.get("algorithm"), "dataset": m.get("dataset"), "semisup_version": __version__}


def _example(meta: dict, n: int, dtype=torch.uint8, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, meta["channels"], meta["image_size"], meta["image_size"]), generator=g,
                      dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.float() / 255.0


def _check(name: str, got: np.ndarray, want: Tensor) -> float:
    diff = float(np.abs(got - want.numpy()).max())
    if not diff <= TOLERANCE:  # also catches nan
        raise UserError(f"the exported {name} file disagrees with PyTorch on random images (max |logit difference| "
                        f"{diff:.3g} > {TOLERANCE}); the model holds an operation the exporter does not translate")
    return diff


def _torchscript(net: Network, meta: dict, tmp: Path) -> float:
    example = _example(meta, 2).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices: the format still loads everywhere
        traced = torch.jit.trace(net, example, check_trace=False)
        module = torch.jit.script(EitherDtype(traced, meta))
        torch.jit.save(module, str(tmp), _extra_files={"semisup.json": json.dumps(meta)})
        back = torch.jit.load(str(tmp))
        diff = 0.0
        for n in (1, 3):
            with torch.no_grad():
                x = _example(meta, n, seed=n)
                diff = max(diff, _check("TorchScript", back(x).numpy(), net(x.float())),
                           _check("TorchScript", back(x.float() / 255.0).numpy(), net(x.float())))
    return diff


def _need_onnx():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx, onnxscript and onnxruntime packages ({e.name} is missing): "
                        "pip install 'semisup[export]'") from None
    return onnx, onnxruntime


def _onnx(net: Network, meta: dict, tmp: Path, input_dtype: str) -> float:
    onnx, ort = _need_onnx()
    wrapper = (FromUint8 if input_dtype == "uint8" else FromUnit)(net).eval()
    dtype = torch.uint8 if input_dtype == "uint8" else torch.float32
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log = io.StringIO()  # the exporter reports its progress on stdout
        try:
            with contextlib.redirect_stdout(log):
                prog = torch.onnx.export(wrapper, (_example(meta, 2, dtype),), dynamo=True,
                                         dynamic_shapes=({0: batch},), input_names=["images"],
                                         output_names=["logits"])
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise UserError(f"torch.onnx.export failed on this model ({type(e).__name__}: {first}); export it with "
                            "--format torchscript instead") from None
    proto = prog.model_proto
    facts = {"semisup.json": json.dumps(meta), "classes": json.dumps(meta["classes"]),
             **{k: json.dumps(meta[k]) if isinstance(meta[k], list) else str(meta[k])
                for k in ("num_classes", "image_size", "channels", "mean", "std", "fit", "input", "head", "weights")},
             "input_dtype": input_dtype}
    for k, v in facts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save_model(proto, str(tmp))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
    diff = 0.0
    for n in (1, 3):
        x = _example(meta, n, dtype, seed=n)
        with torch.no_grad():
            want = wrapper(x)
        diff = max(diff, _check("ONNX", sess.run(None, {"images": x.numpy()})[0], want))
    return diff


def export(target: str | Path, fmt: str = "torchscript", out: str | Path | None = None, raw: bool = False,
           input_dtype: str = "uint8") -> dict:
    """Write the run's model (best.pt, else last.pt; ``raw``: the trained weights instead of the EMA) as
    ``fmt`` to ``out`` (default RUN_DIR/model.ts or RUN_DIR/model.onnx); ``input_dtype`` (ONNX) uint8 or
    float. Returns what was written: {"file", "format", "input", "classes", "bytes", "max_abs_diff", ...}."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if input_dtype not in INPUTS:
        raise UserError(f"unknown input dtype {input_dtype!r}; use uint8 or float")
    if fmt == "onnx":
        _need_onnx()  # before the model is built: the missing package is the first thing to fix
    loaded = load_model(target, raw=raw, device="cpu")
    dest = Path(out) if out is not None else loaded.path.parent / FORMATS[fmt]
    if dest.is_dir():
        raise UserError(f"output {str(dest)!r} is a directory; give a file name (e.g. {str(dest / FORMATS[fmt])!r})")
    if not dest.parent.is_dir():
        raise UserError(f"cannot write {str(dest)!r}: the directory {str(dest.parent)!r} does not exist")
    input_desc = INPUTS[input_dtype] if fmt == "onnx" else f"{INPUTS['uint8']}, or float pixels in [0, 1]"
    meta = metadata(loaded, input_desc)
    net = Network(loaded).float().eval()
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with torch.no_grad():
            diff = _torchscript(net, meta, tmp) if fmt == "torchscript" else _onnx(net, meta, tmp, input_dtype)
        os.replace(tmp, dest)
    except OSError as e:  # a full disk, no permission: the temp file goes, an older export stays
        raise UserError(f"cannot write {str(dest)!r} ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(dest), "format": fmt, "input": input_desc, "classes": len(meta["classes"]),
            "image_size": meta["image_size"], "channels": meta["channels"], "head": meta["head"],
            "weights": meta["weights"], "step": meta["step"], "bytes": dest.stat().st_size,
            "max_abs_diff": float(f"{diff:.3g}")}
