"""The fused CPU batch norm + activation kernel (semisup/models/fused.py, bn_act.cpp).

Checked against a float64 reference (F.batch_norm then leaky_relu, autograd for the gradients), against
nn.BatchNorm2d's running-statistics update, and end to end: a model gives the same outputs, gradients
and state_dict with the kernel on and off. Needs a C++ compiler (CI installs g++)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semisup import config as C
from semisup.config import ModelConfig
from semisup.errors import ConfigError
from semisup.models import build_model, fused
from semisup.runtime import Runtime

pytestmark = pytest.mark.skipif(fused.library() is None, reason=f"fused kernel unavailable: {fused._error}")
CL = torch.channels_last


@pytest.fixture(autouse=True)
def enabled():
    before = fused.enabled()
    fused.set_enabled(True)
    yield
    fused.set_enabled(before)


def bn_pair(c: int, slope: float | None, momentum: float | None = 0.1, seed: int = 0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(c, eps=1e-3, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn, (nn.ReLU() if slope is None else nn.LeakyReLU(slope))


def data(shape, dtype, mean=1.0, std=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * std + mean).to(dtype).contiguous(memory_format=CL)
    dy = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=CL)
    return x, dy


def reference(bn, slope, x, dy):
    """float64 autograd: y, dx, dweight, dbias."""
    xd = x.double().requires_grad_()
    w = bn.weight.detach().double().requires_grad_()
    b = bn.bias.detach().double().requires_grad_()
    y = F.leaky_relu(F.batch_norm(xd, None, None, w, b, True, 0.0, bn.eps), slope or 0.0)
    y.backward(dy.double())
    return y.detach(), xd.grad, w.grad, b.grad


def run_fused(bn, act, x, dy):
    x = x.clone().requires_grad_()
    bn.weight.grad = bn.bias.grad = None
    y = fused.bn_act(bn, act, x)
    y.backward(dy)
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad


# (N, C, H, W): C not a multiple of the vector width; M = N*H*W below and above the threaded size
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (16, 17, 9, 9), (64, 32, 16, 16), (2, 64, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slope", [0.1, None])
def test_matches_float64_reference(shape, dtype, slope):
    bn, act = bn_pair(shape[1], slope)
    x, dy = data(shape, dtype)
    got = run_fused(bn, act, x, dy)
    want = reference(bn, slope, x, dy)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32
    assert got[0].is_contiguous(memory_format=CL) and got[1].is_contiguous(memory_format=CL)
    # bf16 outputs: one rounding of a value of size <= ~8 (2^-8 relative); fp32: float accumulation
    tol = {torch.float32: 2e-5, torch.bfloat16: 2e-2}[dtype]
    for name, g, w in zip(("y", "dx", "dweight", "dbias"), got, want):
        scale = max(1.0, w.abs().max().item())
        err = (g.double() - w).abs().max().item() / scale
        # weight/bias gradients are float32 sums of the bf16 dy: as exact as fp32 whatever the storage
        assert err < (tol if name in ("y", "dx") else 2e-5), (name, err)


def test_large_mean_small_spread_keeps_the_variance():
    """Shifted sums and z = (x - mean) * scale + b: a channel at 1000 +- 0.01 (fp32) still normalises to unit
    spread, and its gradients stay right. Slope 1 (identity), so that no activation mask can flip on the
    float rounding of a mean of 1000 (ulp 6e-5, 0.006 std) and hide or fake an error."""
    bn, act = bn_pair(8, 1.0)
    x, dy = data((32, 8, 8, 8), torch.float32, mean=1000.0, std=0.01)
    got = run_fused(bn, act, x, dy)
    want = reference(bn, 1.0, x, dy)
    for name, g, w in zip(("y", "dx", "dweight", "dbias"), got, want):
        scale = max(1.0, w.abs().max().item())
        assert (g.double() - w).abs().max().item() / scale < 1e-2, name  # naive E[x^2] - E[x]^2 in float: ~1


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_follow_nn_batchnorm(momentum):
    x, _ = data((8, 6, 7, 7), torch.float32)
    bn_a, act = bn_pair(6, 0.1, momentum)
    bn_b, _ = bn_pair(6, 0.1, momentum)
    for step in range(3):
        xs = x * (step + 1)
        act(bn_a(xs))
        fused.bn_act(bn_b, act, xs.contiguous(memory_format=CL))
    assert int(bn_b.num_batches_tracked) == 3
    torch.testing.assert_close(bn_b.running_mean, bn_a.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn_b.running_var, bn_a.running_var, rtol=1e-5, atol=1e-5)


def test_without_running_statistics():
    bn = nn.BatchNorm2d(4, track_running_stats=False)
    x, dy = data((4, 4, 6, 6), torch.float32)
    y = fused.bn_act(bn, nn.LeakyReLU(0.1), x)
    torch.testing.assert_close(y, F.leaky_relu(F.batch_norm(x, None, None, bn.weight, bn.bias, True), 0.1),
                               rtol=1e-5, atol=1e-5)


def test_deterministic_across_calls():
    bn, act = bn_pair(32, 0.1, momentum=None)
    x, dy = data((64, 32, 16, 16), torch.bfloat16)
    a, b = run_fused(bn, act, x, dy), run_fused(bn, act, x, dy)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_falls_back_where_it_does_not_apply(monkeypatch):
    """NCHW layout, float64, eval mode, disabled: PyTorch's own modules run (the kernel is never called)."""
    called = []
    monkeypatch.setattr(fused._BNAct, "apply", lambda *a: called.append(1))
    bn, act = bn_pair(4, 0.1)
    x, _ = data((4, 4, 6, 6), torch.float32)
    fused.bn_act(bn, act, x.contiguous())  # NCHW
    fused.bn_act(bn.double(), act, x.double().contiguous(memory_format=CL))  # float64 (weights too)
    bn.float()
    bn.eval()
    fused.bn_act(bn, act, x)
    bn.train()
    fused.set_enabled(False)
    fused.bn_act(bn, act, x)
    assert called == []
    fused.set_enabled(True)
    fused.bn_act(bn, act, x)
    assert called == [1]


def test_one_value_per_channel_is_refused_like_pytorch():
    bn, act = bn_pair(4, 0.1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fused.bn_act(bn, act, torch.randn(1, 4, 1, 1).contiguous(memory_format=CL))
    assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("name", ["wrn", "smallcnn", "resnet18"])
def test_model_same_with_kernel_on_and_off(name):
    """Training-mode forward + backward of a whole model, fp32: same logits, gradients, running statistics."""
    cfg = ModelConfig(name=name, depth=10, width=1, bn_momentum=0.1)
    out = {}
    for on in (False, True):
        fused.set_enabled(on)
        torch.manual_seed(0)
        model = build_model(cfg, 10, 3, 16).to(memory_format=CL).train()
        x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=CL)
        logits = model(x).logits
        logits.square().mean().backward()
        out[on] = (logits.detach(), [p.grad for p in model.parameters()], model.state_dict())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-4)
    for g1, g0 in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-4)
    assert out[True][2].keys() == out[False][2].keys()
    for k in out[False][2]:
        torch.testing.assert_close(out[True][2][k].float(), out[False][2][k].float(), rtol=1e-4, atol=1e-5)


def _rt(monkeypatch, mode: str, lib_ok: bool = True, device: str = "cpu") -> Runtime:
    if not lib_ok:
        monkeypatch.setattr(fused, "_lib", None)
        monkeypatch.setattr(fused, "_error", "no C++ compiler found (set CXX, or install g++)")
    cfg = C.RunConfig(fused_bn=mode, device=device)
    return Runtime(cfg)


def test_runtime_modes(monkeypatch):
    assert _rt(monkeypatch, "auto").fused_bn and fused.enabled()
    assert not _rt(monkeypatch, "off").fused_bn and not fused.enabled()
    assert _rt(monkeypatch, "on").fused_bn
    assert not _rt(monkeypatch, "auto", lib_ok=False).fused_bn  # auto without a compiler: PyTorch's kernels
    with pytest.raises(ConfigError, match="cannot be built: no C\\+\\+ compiler"):
        _rt(monkeypatch, "on", lib_ok=False)


def test_runtime_on_needs_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(Runtime, "_amp_dtype", lambda self, amp: None)
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **k: None)
    assert not _rt(monkeypatch, "auto", device="cuda").fused_bn
    with pytest.raises(ConfigError, match="CPU kernel"):
        _rt(monkeypatch, "on", device="cuda")


def test_config_rejects_other_values():
    with pytest.raises(ConfigError, match="fused_bn"):
        C.resolve(None, overrides=["--run.fused_bn=yes"])


def test_build_failure_and_missing_compiler(monkeypatch, tmp_path):
    """A compiler error or no compiler: library() is None with the reason; the cache has no partial file."""
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_lib", None)
    monkeypatch.setattr(fused, "_error", None)
    monkeypatch.setattr(fused, "FLAGS", [*fused.FLAGS, "-DSEMISUP_TEST", "--no-such-flag"])
    assert fused.library() is None
    assert "failed" in fused.unavailable_reason() and "no-such-flag" in fused.unavailable_reason()
    assert list((tmp_path / "ext").iterdir()) == []
    monkeypatch.setattr(fused, "_error", None)
    monkeypatch.setattr(fused, "_compiler", lambda: None)
    assert fused.library() is None and "no C++ compiler" in fused.unavailable_reason()


def test_builds_into_the_cache_once(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_lib", None)
    monkeypatch.setattr(fused, "_error", None)
    assert fused.library() is not None
    built = list((tmp_path / "ext").glob("bn_act-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(fused, "_lib", None)
    assert fused.library() is not None  # loaded from the cache, not rebuilt
    assert built[0].stat().st_mtime_ns == stamp


def test_an_optional_flag_the_compiler_rejects_is_dropped(monkeypatch, tmp_path):
    """A compiler without OpenMP: the build is retried without the optional flags and works."""
    monkeypatch.setenv("SEMISUP_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_lib", None)
    monkeypatch.setattr(fused, "_error", None)
    monkeypatch.setattr(fused, "FLAGS", [*fused.FLAGS, "--no-such-flag"])
    monkeypatch.setattr(fused, "OPTIONAL_FLAGS", ("--no-such-flag", "-fopenmp"))
    lib = fused.library()
    assert lib is not None and fused.unavailable_reason() is None
    bn, act = bn_pair(16, 0.1)
    x, dy = data((128, 16, 8, 8), torch.float32)  # 8192 rows: two threads (std::thread build)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    got = run_fused(bn, act, x, dy)
    want = reference(bn, 0.1, x, dy)
    assert (got[1].double() - want[1]).norm() / want[1].norm() < 1e-5


def test_an_unwritable_cache_means_unavailable_not_a_crash(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SEMISUP_CACHE", str(blocker))  # a file where the cache directory should be
    monkeypatch.setattr(fused, "_lib", None)
    monkeypatch.setattr(fused, "_error", None)
    assert fused.library() is None
    assert "file" in fused.unavailable_reason()
    assert not Runtime(C.RunConfig(fused_bn="auto", device="cpu")).fused_bn

