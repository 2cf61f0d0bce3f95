"""Fused batch norm + LeakyReLU for the CPU training step (``run.fused_bn``).

On a CPU the bf16 WRN-28-2 step spends a fifth to a third of its time in batch norm and LeakyReLU
(more on CPUs with faster matrix units), which are memory-bound: PyTorch runs them as separate kernels
that make ~13 passes over each activation tensor (forward + backward), this makes 8 (bn_act.cpp says
how). Used for training-mode ``nn.BatchNorm2d`` followed by ``nn.LeakyReLU`` or ``nn.ReLU`` on
channels_last fp32/bf16 CPU tensors; anything else (eval mode, CUDA, NCHW, SyncBatchNorm, torch.compile
tracing) takes PyTorch's own path, so the model's modules, parameters and state_dict are the same
either way.

The kernel is plain C++ compiled on first use with the system compiler (``$CXX`` or ``c++``, FLAGS
below) into ``$SEMISUP_CACHE/ext`` (default ``~/.cache/semisup/ext``), keyed by the source, the flags,
the compiler and the CPU, and loaded with ctypes: one to two seconds, once. Without a compiler (or if
the build fails), ``run.fused_bn=auto`` quietly keeps PyTorch's kernels.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import cache_root

SOURCE = Path(__file__).with_name("bn_act.cpp")
# 512-bit vectors where the CPU has them: measured 21 ms vs 32 ms for a bf16 960x32x32x32 forward + backward.
# -fopenmp: the kernel's threads are PyTorch's OpenMP pool (libgomp.so.1, loaded once per process): bf16
# 960x32x32x32 forward + backward 21.7 ms against 29.7-31.1 with a std::thread pair per pass competing with
# PyTorch's spinning pool. A compiler without OpenMP gets the std::thread build (OPTIONAL_FLAGS dropped).
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=off", "-fopenmp", "-std=c++17",
         "-shared", "-fPIC", "-pthread"]
OPTIONAL_FLAGS = ("-fopenmp",)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None  # why the library is unavailable (after a failed attempt)
_enabled = False


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _build(cxx: str) -> Path:
    """The cached shared library for this source, flags, compiler and CPU, compiling it if missing.
    Raises OSError (unwritable cache, a compiler that cannot run) or RuntimeError (a compile error)."""
    src = SOURCE.read_bytes()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256(b"\0".join([src, " ".join(FLAGS).encode(), str(version).encode(),
                                     _cpu_id().encode()])).hexdigest()[:16]
    out = cache_root() / "ext" / f"bn_act-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)  # then an atomic rename: ranks may race
    os.close(fd)
    try:
        res = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0 and any(f in FLAGS for f in OPTIONAL_FLAGS):
            plain = [f for f in FLAGS if f not in OPTIONAL_FLAGS]
            res = subprocess.run([cxx, *plain, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} with {cxx} failed: {res.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first call; None (see ``unavailable_reason``) if it cannot be."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        cxx = _compiler()
        if cxx is None:
            _error = "no C++ compiler found (set CXX, or install g++)"
            return None
        try:
            lib = ctypes.CDLL(str(_build(cxx)))
        except (OSError, RuntimeError) as e:  # unwritable cache, compile error, a library the loader refuses
            _error = str(e)
            return None
        i64, f32, ptr, c_int = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int
        lib.semisup_bn_act_forward.argtypes = [ptr, ptr, c_int, i64, i64, ptr, ptr, f32, f32, f32, ptr, ptr, ptr, ptr,
                                               c_int]
        lib.semisup_bn_act_backward.argtypes = [ptr, ptr, ptr, c_int, i64, i64, ptr, ptr, ptr, ptr, f32, ptr, ptr,
                                                c_int]
        _lib = lib
        return _lib


def unavailable_reason() -> str | None:
    library()
    return _error


def set_enabled(flag: bool) -> None:
    """Route eligible BN + LeakyReLU pairs through the fused kernel (the runtime sets this from run.fused_bn)."""
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    return _enabled


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _BNAct(torch.autograd.Function):
    """y = leaky_relu(batch_norm(x) * w + b) over a channels_last (N, C, H, W) tensor, batch statistics."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, slope: float):
        lib = library()
        c = x.shape[1]
        m = x.numel() // c
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean = torch.empty(c, dtype=torch.float32)
        invstd = torch.empty(c, dtype=torch.float32)
        w = weight.detach().float().contiguous()
        b = bias.detach().float().contiguous()
        lib.semisup_bn_act_forward(
            _ptr(x), _ptr(y), int(x.dtype == torch.bfloat16), m, c, _ptr(w), _ptr(b), eps, slope,
            momentum if running_mean is not None else -1.0, _ptr(running_mean), _ptr(running_var),
            _ptr(mean), _ptr(invstd), torch.get_num_threads())
        ctx.save_for_backward(x, w, b, mean, invstd)
        ctx.slope = slope
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, b, mean, invstd = ctx.saved_tensors
        c = x.shape[1]
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dw = torch.empty(c, dtype=torch.float32)
        db = torch.empty(c, dtype=torch.float32)
        library().semisup_bn_act_backward(
            _ptr(x), _ptr(dy), _ptr(dx), int(x.dtype == torch.bfloat16), x.numel() // c, c, _ptr(w), _ptr(b),
            _ptr(mean), _ptr(invstd), ctx.slope, _ptr(dw), _ptr(db), torch.get_num_threads())
        return dx, dw, db, None, None, None, None, None


def _eligible(bn: nn.Module, act: nn.Module, x: Tensor) -> bool:
    return (
        _enabled
        and bn.training
        and type(bn) is nn.BatchNorm2d
        and type(act) in (nn.LeakyReLU, nn.ReLU)
        and bn.affine
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dim() == 4
        and x.numel() > 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and bn.weight.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and library() is not None
    )


def bn_act(bn: nn.BatchNorm2d, act: nn.Module, x: Tensor) -> Tensor:
    """``act(bn(x))`` for a LeakyReLU or ReLU ``act``, fused when eligible. Same running-statistics update as
    nn.BatchNorm2d: momentum, or the cumulative average (momentum None) over num_batches_tracked."""
    if not _eligible(bn, act, x):
        return act(bn(x))
    if x.numel() // x.shape[1] <= 1:  # a batch variance of 0: PyTorch refuses it, so do we (same message)
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
    factor = 0.0
    if bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
    rm, rv = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    slope = float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 0.0
    return _BNAct.apply(x, bn.weight, bn.bias, rm, rv, factor, float(bn.eps), slope)


def run_sequential(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``seq(x)``, with each BatchNorm2d directly followed by a LeakyReLU / ReLU run through ``bn_act``."""
    mods = list(seq)
    i = 0
    while i < len(mods):
        pair = i + 1 < len(mods) and isinstance(mods[i], nn.BatchNorm2d)
        if pair and isinstance(mods[i + 1], (nn.LeakyReLU, nn.ReLU)):
            x = bn_act(mods[i], mods[i + 1], x)
            i += 2
        else:
            x = mods[i](x)
            i += 1
    return x
