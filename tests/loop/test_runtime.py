"""run.amp=auto on CPU: bf16 only where the CPU computes bf16 natively."""
import pytest
import torch

from semisup import config as C
from semisup import runtime
from semisup.errors import ConfigError


@pytest.mark.parametrize("avx512_bf16,amx,want", [(False, False, False), (True, False, True), (False, True, True)])
def test_native_bf16_probe(monkeypatch, avx512_bf16, amx, want):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    # oneDNN's own check says yes on any AVX-512 CPU (emulated bf16); the probe must not follow it
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert runtime.cpu_has_native_bf16() is want


@pytest.mark.parametrize("native", [False, True])
def test_auto_amp_follows_the_probe_and_explicit_values_win(monkeypatch, native):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    rt = runtime.Runtime(C.RunConfig(device="cpu", amp="auto"))
    assert rt.amp_dtype == (torch.bfloat16 if native else None)
    assert runtime.Runtime(C.RunConfig(device="cpu", amp="bf16")).amp_dtype == torch.bfloat16
    assert runtime.Runtime(C.RunConfig(device="cpu", amp="off")).amp_dtype is None
    with pytest.raises(ConfigError, match="fp16 is for CUDA"):
        runtime.Runtime(C.RunConfig(device="cpu", amp="fp16"))
