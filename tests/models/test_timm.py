"""model.name=timm:<architecture>: the shared interface, pretrained weights files, errors, a CLI run.

timm's own test architectures (test_resnet, test_vit, test_convnext: 0.2-0.4 M parameters) keep it fast.
"""
from __future__ import annotations

import sys

import pytest
import torch
from helpers import run_cli, tiny_overrides
from torch import nn

from semisup.config import ModelConfig
from semisup.errors import ConfigError
from semisup.models import Classifier, ModelOutput, build_model

timm = pytest.importorskip("timm")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(arch: str, c: int = 3, s: int = 32, k: int = 10, seed: int = 0, **cfg) -> Classifier:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=f"timm:{arch}", **cfg), k, c, s)


def weights_file(tmp_path, arch: str, suffix: str, wrap: str | None = None):
    """A seeded timm model with its ImageNet head (as a downloaded file has), BN statistics moved off their
    initial values by one training-mode batch; saved as .safetensors or a torch file. Returns (path, state)."""
    torch.manual_seed(123)
    src = timm.create_model(arch)
    with torch.no_grad():
        src.train()(torch.randn(4, 3, 32, 32))
    state = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"{arch}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    return path, state


@pytest.mark.parametrize("arch,c", [("test_resnet", 3), ("test_convnext", 3), ("test_vit", 3), ("test_vit", 1),
                                    ("test_resnet", 1)])
def test_interface_convnets_vits_and_greyscale(arch, c):
    model = make(arch, c, 32, 7)
    out = model(torch.randn(3, c, 32, 32))  # (B, C, H, W)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 7) and out.logits.dtype == torch.float32
    assert out.features.shape == (3, model.num_features) and out.features.dtype == torch.float32
    assert (model.head.in_features, model.head.out_features) == (model.num_features, 7)
    model.eval()
    x = torch.randn(2, c, 32, 32)
    assert torch.equal(model.encode(x), model(x).features)


def test_timm_init_is_kept_and_bn_momentum_comes_from_the_config():
    model = make("test_resnet", bn_momentum=0.05)
    torch.manual_seed(0)
    ref = timm.create_model("test_resnet", num_classes=0)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k  # no semisup init_weights on the timm part
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.momentum == 0.05 for m in bns)


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("suffix,wrap", [(".safetensors", None), (".pth", "state_dict"), (".bin", None),
                                         (".pt", "model")])
def test_pretrained_file_loads_the_encoder_and_a_fresh_head(tmp_path, arch, suffix, wrap):
    path, state = weights_file(tmp_path, arch, suffix, wrap)
    s = 160  # the architecture's own size: a ViT's position embeddings load unresampled
    model = make(arch, 3, s, 7, seed=1, pretrained=str(path))
    enc = model.encoder.state_dict()
    head = timm.create_model(arch).pretrained_cfg["classifier"]
    for k, v in enc.items():
        if k.endswith("num_batches_tracked"):
            assert int(v) == 0, k  # restarted, as model.init_from does: the loop's BN warm-up counts from 0
        else:
            assert torch.equal(v, state[k]), k
    assert not any(k.startswith(f"{head}.") for k in enc)
    assert model.head.out_features == 7 and torch.all(model.head.bias == 0)  # semisup's fresh head
    scratch = make(arch, 3, s, 7, seed=1)
    assert torch.equal(model.head.weight, scratch.head.weight)  # drawn after the encoder, as without a file
    assert not any(torch.equal(v, scratch.encoder.state_dict()[k]) for k, v in enc.items() if v.dtype.is_floating_point
                   and v.numel() > 1 and v.std() > 0), "every random weight came from the file"


def test_pretrained_vit_at_another_size_and_greyscale(tmp_path):
    """RGB 160 px weights on 1 x 32 x 32 data: the patch filter sums the RGB filters (timm's adapt_input_conv),
    the position embeddings are resampled to the 2 x 2 grid (timm's checkpoint filter)."""
    path, state = weights_file(tmp_path, "test_vit", ".safetensors")
    model = make("test_vit", 1, 32, 10, pretrained=str(path))
    enc = model.encoder.state_dict()
    assert torch.allclose(enc["patch_embed.proj.weight"], state["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert enc["pos_embed"].shape == (1, 1 + 2 * 2, state["pos_embed"].shape[-1])
    assert torch.equal(enc["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert model(torch.randn(2, 1, 32, 32)).logits.shape == (2, 10)


def test_pretrained_file_errors(tmp_path):
    path, _ = weights_file(tmp_path, "test_vit", ".safetensors")
    with pytest.raises(ConfigError, match=r"does not fit timm:test_resnet: unexpected key '.*'") as e:
        make("test_resnet", pretrained=str(path))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        make("test_resnet", pretrained=str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConfigError, match="not a readable weights file"):
        make("test_resnet", pretrained=str(bad))
    run_ckpt = tmp_path / "best.pt"  # a semisup checkpoint: encoder.* keys
    torch.save({"model": make("test_resnet").state_dict()}, run_ckpt)
    with pytest.raises(ConfigError, match="use model.init_from"):
        make("test_resnet", pretrained=str(run_ckpt))


def test_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="timm.list_models"):
        make("no_such_net")
    with pytest.raises(ConfigError, match="model.init_from"):
        build_model(ModelConfig(name="smallcnn", pretrained=True), 10, 1, 28)
    with pytest.raises(ConfigError, match="data.image_size"):
        make("test_vit", 1, 28)  # 28 px is not a multiple of its 16 px patches: caught when built, not in training
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install timm"):
        make("test_resnet")


def test_pretrained_true_offline_is_one_line(monkeypatch):
    real = timm.create_model

    def offline(*a, **kw):
        if kw.get("pretrained"):  # what huggingface_hub raises offline, after its retries
            raise OSError("An error happened while trying to locate the file on the Hub and we cannot find the "
                          "requested files in the local cache.\nPlease check your connection.")
        return real(*a, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="model.pretrained=PATH") as e:
        make("test_resnet", pretrained=True)
    assert "\n" not in str(e.value) and "OSError" in str(e.value)


def test_init_from_and_freeze_encoder(tmp_path):
    src = make("test_convnext", 3, 32, 10)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict()}, path)
    model = make("test_convnext", 3, 32, 5, seed=1, init_from=str(path), freeze_encoder=True)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    assert not any(p.requires_grad for p in model.encoder.parameters()) and model.head.weight.requires_grad


def test_cli_run_with_a_weights_file_then_init_from_its_best(tmp_path):
    path, _ = weights_file(tmp_path, "test_resnet", ".safetensors")
    common = {"data.image_size": 32, "model.name": "timm:test_resnet", "algorithm.name": "fixmatch",
              "train.steps": 4, "train.eval_every": 2, "train.batch_size": 8, "train.mu": 7}
    first = tmp_path / "first"
    r = run_cli("train", *tiny_overrides(first, **common, **{"model.pretrained": path}))
    assert r.returncode == 0, r.stderr
    assert (first / "best.pt").is_file()
    best = torch.load(first / "best.pt", map_location="cpu", weights_only=False)["model"]
    second = tmp_path / "second"
    r = run_cli("train", *tiny_overrides(second, **common, **{"model.init_from": first / "best.pt"}))
    assert r.returncode == 0, r.stderr
    # the encoder the second run started from is best.pt's (the BN counters restart, as model.init_from does)
    model = build_model(ModelConfig(name="timm:test_resnet", init_from=str(first / "best.pt")), 10, 1, 32)
    for k, v in model.encoder.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, best[f"encoder.{k}"]), k
    assert str(path) in (first / "config.yaml").read_text()  # the run records where its weights came from
