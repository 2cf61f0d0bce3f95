"""Every registered model gets the same checks for free (parametrized over MODELS.names())."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from semisup.config import ModelConfig
from semisup.errors import ConfigError
from semisup.models import MODELS, ModelOutput, build_model

# + a timm convnet (tests/models/test_timm.py has ViTs, ConvNeXt and weights files; they need other image sizes)
NAMES = MODELS.names() + (["timm:test_resnet"] if importlib.util.find_spec("timm") else [])
SHAPES = [(1, 28, 10), (3, 32, 10), (1, 8, 10), (3, 32, 100)]  # (in_channels, image_size, num_classes)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(name: str, c: int = 3, s: int = 32, k: int = 10, **cfg) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **cfg), k, c, s)


def images(b: int, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, s, s, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)


def test_registry_has_the_models():
    assert {"wrn", "resnet18", "lenet", "smallcnn"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("c,s,k", SHAPES)
def test_shapes_and_interface(name, c, s, k):
    model = make(name, c, s, k)
    out = model(images(3, c, s))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, k) and out.logits.dtype == torch.float32
    assert out.features.shape == (3, model.num_features)
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (model.num_features, k)


@pytest.mark.parametrize("name", NAMES)
def test_stl_size_small_batch(name):
    model = make(name, 3, 96, 10).eval()
    with torch.no_grad():
        out = model(images(2, 3, 96))
    assert out.logits.shape == (2, 10) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_encode_equals_forward_features(name):
    model = make(name, 1, 28).eval()
    x = images(4, 1, 28)
    with torch.no_grad():
        assert torch.equal(model.encode(x), model(x).features)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model = make(name).train()
    with torch.no_grad():  # timm zero-initialises each residual block's last BN scale: the branch gets no gradient
        for m in model.modules():  # at step 0 by design; a scale of 1 lets the test find truly detached weights
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any():
                m.weight.fill_(1.0)
    out = model(images(4))
    nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets a zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_channels_last_matches_fp32(name):
    # bn_momentum=1: one train-mode pass sets realistic running stats, so eval outputs are typical
    model = make(name, bn_momentum=1.0)
    x = images(16)
    with torch.no_grad():
        model.train()(x)
        model.eval()
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.to(memory_format=torch.channels_last))
    assert out.logits.dtype == torch.float32 and out.features.dtype == torch.float32  # head ran in fp32
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()
    scale = ref.logits.abs().max()
    assert (out.logits - ref.logits).abs().max() <= 0.05 * scale + 1e-3  # measured: 0.3-2 %
    cos = nn.functional.cosine_similarity(out.features, ref.features, dim=1)  # (B,)
    assert cos.min() > 0.995  # measured: > 0.9998


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_is_kept_inside(name):
    # a layer that silently re-lays out (view, permute, NCHW-only op) would cost a copy per layer
    model = make(name).to(memory_format=torch.channels_last)
    seen = []

    def check(mod, inp, _out):
        x = inp[0]
        seen.append(type(mod).__name__)
        assert x.is_contiguous(memory_format=torch.channels_last), f"{type(mod).__name__} input is not channels_last"

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.register_forward_hook(check)
    with torch.no_grad():
        model(images(2).to(memory_format=torch.channels_last))
    assert seen


@pytest.mark.parametrize("name", NAMES)
def test_bf16_channels_last_training_step(name):
    model = make(name, 1, 28).train().to(memory_format=torch.channels_last)
    x = images(8, 1, 28).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = nn.functional.cross_entropy(out.logits, torch.arange(8) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name):
    model = make(name, 1, 28).eval()
    x = images(4, 1, 28)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)


@pytest.mark.parametrize("name", NAMES)
def test_dropout_acts_on_head_input_only(name):
    model = make(name, 1, 28, dropout=0.5).train()
    x = images(8, 1, 28)
    a, b = model(x), model(x)
    assert torch.equal(a.features, b.features)  # the encoder has no dropout
    assert not torch.equal(a.logits, b.logits)


def test_lenet_has_dropout_by_default():
    model = make("lenet", 1, 28).train()  # cfg.dropout == 0 -> lenet's own 0.5
    x = images(8, 1, 28)
    assert not torch.equal(model(x).logits, model(x).logits)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)


@pytest.mark.parametrize("name", NAMES)
def test_bn_momentum_and_slope_from_config(name):
    model = make(name, bn_momentum=0.05, leaky_slope=0.2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.momentum == 0.05
        if isinstance(m, nn.LeakyReLU):
            assert m.negative_slope == 0.2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_reference_parameter_counts():
    assert n_params(make("wrn", 3, 32, 10)) == 1_467_610  # WRN-28-2, FixMatch-pytorch / USB figure
    assert n_params(make("resnet18", 3, 32, 10)) == 11_173_962  # kuangliu CIFAR ResNet-18


@pytest.mark.parametrize("depth", [27, 4, 0])
def test_wrn_bad_depth(depth):
    with pytest.raises(ConfigError, match="depth"):
        make("wrn", depth=depth)


def test_wrn_other_depth_and_width():
    model = make("wrn", 1, 28, 10, depth=16, width=1)
    assert model.num_features == 64
    assert model(images(2, 1, 28)).logits.shape == (2, 10)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown model"):
        make("no_such_net")


@pytest.mark.parametrize("bad", [{"k": 0}, {"c": 0}, {"s": -1}])
def test_bad_dimensions(bad):
    with pytest.raises(ConfigError):
        make("smallcnn", **bad)


@pytest.mark.parametrize("name", NAMES)
def test_init_from_loads_encoder_not_head(name, tmp_path):
    src = make(name, 1, 28, 10)
    path = tmp_path / "ckpt.pt"
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # as saved from DDP
    torch.save({"model": state, "step": 3}, path)
    torch.manual_seed(1)
    dst = build_model(ModelConfig(name=name, init_from=str(path)), 5, 1, 28)  # another head size
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k
    assert dst.head.out_features == 5


@pytest.mark.parametrize("name", ["wrn", "smallcnn"])
def test_init_head_continues_the_whole_classifier_and_refuses_another_head(name, tmp_path):
    src = make(name, 1, 28, 10)
    nn.init.normal_(src.head.weight)  # not the fresh model's initialisation
    path = tmp_path / "last.pt"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}, "step": 3}, path)
    dst = build_model(ModelConfig(name=name, init_from=str(path), init_head=True), 10, 1, 28)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(dst.eval()(x).logits, src.eval()(x).logits)  # same encoder, BN statistics and head
    fresh = build_model(ModelConfig(name=name, init_from=str(path)), 10, 1, 28)
    assert not torch.equal(fresh.head.weight, src.head.weight)
    with pytest.raises(ConfigError, match=r"a head of shape \(10, \d+\), this model's is \(5, \d+\)"):
        build_model(ModelConfig(name=name, init_from=str(path), init_head=True), 5, 1, 28)
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith("head.")}, path)  # an encoder.pt
    with pytest.raises(ConfigError, match="has no classifier head.*model.init_head=false"):
        build_model(ModelConfig(name=name, init_from=str(path), init_head=True), 10, 1, 28)
    with pytest.raises(ConfigError, match="set model.init_from=PATH too"):
        build_model(ModelConfig(name=name, init_head=True), 10, 1, 28)


def test_init_from_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make("wrn", init_from=str(tmp_path / "missing.pt"))
    path = tmp_path / "lenet.pt"
    torch.save(make("lenet").state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit"):
        make("wrn", init_from=str(path))
    torch.save({"head.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ConfigError, match="no 'encoder"):
        make("wrn", init_from=str(path))


def test_init_from_restarts_batchnorm_counters_so_the_warmup_reestimates_statistics(tmp_path):
    """A pretrained encoder's BN counters (2500 SimCLR steps) must not carry over: with the loop's
    cumulative-average warm-up (momentum None, factor 1 / num_batches_tracked) they froze the running
    statistics at the pretraining views' values (fine-tuning from SimCLR then evaluated 4-11 points below
    scratch). The loaded running statistics stay; the first training batch replaces them."""
    src = make("smallcnn", 1, 28, 10)
    bns = [m for m in src.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.running_mean.fill_(3.0)
            m.num_batches_tracked.fill_(2500)
    path = tmp_path / "enc.pt"
    torch.save({"model": src.state_dict()}, path)
    dst = build_model(ModelConfig(name="smallcnn", init_from=str(path)), 10, 1, 28)
    dbn = [m for m in dst.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(int(m.num_batches_tracked) == 0 and torch.all(m.running_mean == 3.0) for m in dbn)
    for m in dbn:
        m.momentum = None  # the loop's warm-up
    dst.train()
    seen = {}
    hook = dbn[0].register_forward_pre_hook(lambda m, inp: seen.update(x=inp[0].detach().clone()))
    with torch.no_grad():
        dst(torch.randn(16, 1, 28, 28))
    hook.remove()
    assert int(dbn[0].num_batches_tracked) == 1
    assert torch.allclose(dbn[0].running_mean, seen["x"].mean(dim=(0, 2, 3)), atol=1e-6), \
        "the first batch's statistics replace the loaded ones"
