"""Where and how tensors run: device, autocast, channels_last, threads, seeds, RNG state.
(What a person watches, the progress bar and TensorBoard, is ``loop/monitor.py``.)"""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch
from torch.profiler import record_function

from . import dist
from .config import RunConfig
from .errors import ConfigError
from .models import fused


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512_BF16 or AMX tiles). oneDNN's own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says yes on any AVX-512 CPU, where bf16 is
    emulated: measured on an Ice Lake Xeon (AVX-512, no AVX512_BF16/AMX), a bf16 matmul ran at 21
    GFLOP/s against 100 in fp32, and a smallcnn step 1.6x slower under bf16 autocast."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [c for c in checks if c is not None]
    if not checks:  # an older torch without these probes: trust oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(c() for c in checks)


class Runtime:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        dev = cfg.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"run.device={cfg.device!r} but no CUDA device is available; use run.device=cpu")
        self.dist = dist.init_from_env(dev.startswith("cuda"), cfg.dist_timeout)
        if self.dist.enabled and dev.startswith("cuda"):
            dev = f"cuda:{self.dist.local_rank}"  # torchrun: one GPU per process
        try:
            self.device = torch.device(dev)
        except RuntimeError:
            raise ConfigError(f"run.device={cfg.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        self.amp_dtype = self._amp_dtype(cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.fused_bn = self._fused_bn(cfg.fused_bn)
        fused.set_enabled(self.fused_bn)

    def _fused_bn(self, mode: str) -> bool:
        if mode == "off":
            return False
        if self.device.type != "cpu":
            if mode == "on":
                raise ConfigError(f"run.fused_bn=on is a CPU kernel but run.device is {self.device}; use "
                                  "run.fused_bn=auto (or off)")
            return False
        if fused.library() is None:
            if mode == "on":
                raise ConfigError(f"run.fused_bn=on but the fused kernel cannot be built: "
                                  f"{fused.unavailable_reason()}; install a C++ compiler or use run.fused_bn=auto")
            return False
        return True

    def _amp_dtype(self, amp: str):
        if amp == "off":
            return None
        if self.device.type == "cpu":
            if amp == "fp16":
                raise ConfigError("run.amp=fp16 is for CUDA; on CPU use run.amp=bf16 or off")
            if amp == "bf16" or cpu_has_native_bf16():
                return torch.bfloat16
            return None  # auto on a CPU without native bf16: full precision
        if amp == "fp16":
            return torch.float16
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device, memory_format=self.memory_format)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, before_step=None) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if before_step is not None:
                before_step()
            with record_function("semisup.optimizer"):
                self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            if before_step is not None:
                before_step()
            with record_function("semisup.optimizer"):
                opt.step()

    # -- RNG state (dropout, anything drawing from torch's global generator) --
    def state_dict(self) -> dict:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, s: dict) -> None:
        torch.set_rng_state(s["torch"])
        np.random.set_state(s["numpy"])
        random.setstate(s["python"])
        if s.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])
        if self.scaler is not None and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])


def setup_runtime(cfg: RunConfig) -> Runtime:
    """Seeds, threads and determinism, then the device/precision choices."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    return Runtime(cfg)
