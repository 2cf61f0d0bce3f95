"""Presets: YAML files that may name a base preset (merged under them); resolve's layers and their order."""
import dataclasses

import pytest
import yaml

from semisup import config as C
from semisup.config import parse
from semisup.errors import ConfigError


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """A preset folder of its own: write(name, text) adds NAME.yaml."""
    monkeypatch.setattr(parse, "PRESET_DIR", tmp_path)

    def write(name, text):
        (tmp_path / f"{name}.yaml").write_text(text)
    return write


def test_a_base_preset_is_merged_first_and_its_own_keys_win(presets):
    presets("root", "train: {steps: 10, eval_every: 5}\noptim: {lr: 0.1}\nalgorithm: {name: fixmatch, T: 0.5}\n")
    presets("mid", "base: root\ntrain: {steps: 20}\nalgorithm: {threshold: 0.7}\n")
    presets("leaf", "base: mid\noptim: {lr: 0.2}\n")
    assert C.load_preset("leaf") == {"train": {"steps": 20, "eval_every": 5}, "optim": {"lr": 0.2},
                                     "algorithm": {"name": "fixmatch", "T": 0.5, "threshold": 0.7}}
    cfg = C.resolve("leaf")
    assert (cfg.train.steps, cfg.train.eval_every, cfg.optim.lr, cfg.algorithm.threshold) == (20, 5, 0.2, 0.7)


def test_a_cycle_of_base_presets_is_refused_in_one_line(presets):
    presets("a", "base: b\ntrain: {steps: 1}\n")
    presets("b", "base: c\n")
    presets("c", "base: a\n")
    presets("selfish", "base: selfish\n")
    with pytest.raises(ConfigError) as e:
        C.resolve("a")
    assert str(e.value) == "preset 'a' has a cycle of base presets: a -> b -> c -> a"
    with pytest.raises(ConfigError, match="selfish -> selfish"):
        C.load_preset("selfish")


def test_a_missing_or_malformed_base_is_named(presets):
    presets("orphan", "base: ghost\n")
    presets("odd", "base: [x, y]\n")
    with pytest.raises(ConfigError) as e:
        C.load_preset("orphan")
    assert str(e.value).startswith("preset 'orphan' names base preset 'ghost', which does not exist; choose one of:")
    with pytest.raises(ConfigError, match="preset 'odd': base must be the name of another preset"):
        C.load_preset("odd")
    with pytest.raises(ConfigError, match="unknown preset 'ghost'"):
        C.load_preset("ghost")


def test_shipped_presets_with_a_base_resolve_as_their_base_with_their_own_keys():
    assert "base" not in C.load_preset("stl10_lt")
    daso, stl = C.resolve("cifar10_lt_daso"), C.resolve("stl10_lt")
    assert (stl.model, stl.train) == (daso.model, daso.train) and stl.algorithm.T_dist == 0.3
    simclr = C.resolve("simclr_fashion_mnist")
    assert (simclr.optim.lr, simclr.optim.warmup_steps, simclr.train.batch_size) == (0.125, 250, 32)


def test_resolve_layers_in_order(tmp_path):
    """defaults < under (a command's presets or mappings) < preset < config file < overrides < forced;
    algorithm= drops a lower layer's section made for another algorithm."""
    f = tmp_path / "c.yaml"
    f.write_text("train: {steps: 7}\noptim: {lr: 0.5}\n")
    cfg = C.resolve("fashion_mnist_40", str(f), ["--optim.lr=0.25"], under=["pretrain_simclr", {"run": {"seed": 3}}],
                    algorithm="simclr", forced={"model": {"freeze_encoder": True}})
    assert cfg.algorithm.name == "simclr" and cfg.run.seed == 3 and cfg.optim.warmup_steps == 100  # under
    assert cfg.data.labels_per_class == 4 and cfg.run.out == "runs/fashion_mnist_40"  # preset over under
    assert cfg.train.steps == 7 and cfg.train.batch_size == 32  # file over preset, under where neither says
    assert cfg.optim.lr == 0.25 and cfg.model.freeze_encoder is True  # overrides over the file; forced
    saved = C.load_saved(_written(tmp_path, cfg))
    assert C.resolve(config_file=saved) == cfg  # a mapping already read is a layer too


def _written(tmp_path, cfg):
    p = tmp_path / "config.yaml"
    p.write_text(C.to_yaml(cfg))
    return p


def test_an_algorithm_name_override_drops_the_presets_fields_of_another_algorithm():
    """What the presets' comments promise (`--algorithm.name=supervised` for the baseline on the same split)."""
    sup = C.resolve("mnist_pl_seed", overrides=["--algorithm.name=supervised"])
    assert sup.algorithm.name == "supervised" and sup.data.max_unlabelled == 19000 and sup.optim.lr == 0.1
    arl = C.resolve("cifar10_lt_arl", overrides=["--algorithm.name=abc", "--algorithm.lambda_abc=2"])
    assert arl.algorithm.name == "abc" and arl.algorithm.lambda_abc == 2 and arl.algorithm.threshold == 0.95
    same = C.resolve("cifar10_lt_arl", overrides=["--algorithm.name=fixmatch"])  # its own: the fields stay
    assert same.algorithm.loss_u == "arl" and same.algorithm.loss_x == "arl"
    with pytest.raises(C.ConfigError, match="algorithm.alpha_f"):  # a field of another algorithm still fails
        C.resolve("mnist_pl_seed", overrides=["--algorithm.name=supervised", "--algorithm.alpha_f=1"])


@pytest.mark.parametrize("name, before", [("abc", {"soft_targets": False, "strong_views": 1}),
                                          ("acr", {"u_estimate": "counts"}),
                                          ("fixmatch", {"arl_alpha": "inverse"}),
                                          ("simclr", {"proj_bn": False})])
def test_a_config_saved_before_an_algorithm_field_loads_with_the_behaviour_it_ran_with(tmp_path, name, before):
    """The fields added with the reference defaults (ARL's alpha, ABC's soft targets and two strong views, ACR's
    presence estimate, SimCLR's BN head): a config.yaml written before them resumes, compares and evaluates with
    the earlier behaviour, not the new default; one that has them keeps its values; other algorithms get none."""
    cfg = C.resolve(overrides=[f"--algorithm.name={name}"])
    assert all(getattr(cfg.algorithm, k) != v for k, v in before.items())  # today's defaults differ
    text = C.to_yaml(cfg)
    old = "".join(line for line in text.splitlines(keepends=True) if line.strip().split(":")[0] not in before)
    (tmp_path / "config.yaml").write_text(old)
    loaded = C.from_dict(C.load_saved(tmp_path / "config.yaml"))
    assert {k: getattr(loaded.algorithm, k) for k in before} == before
    assert C.from_dict(C.load_saved(_written(tmp_path, cfg))) == cfg  # written with the fields: kept
    other = C.fill_saved({"algorithm": {"name": "pi_model"}, "optim": {"name": "adamw"}})
    assert other == {"algorithm": {"name": "pi_model"}, "optim": {"name": "adamw", "ema_warmup": "uniform", "lr": 0.03,
                                                                  "weight_decay": 5e-4, "schedule": "cosine"}}


def test_mixmatch_trains_with_its_references_adam_and_a_config_saved_before_keeps_sgd(tmp_path):
    """MixMatch (and ReMixMatch) declare the reference's optimiser (Adam 0.002, weight decay 0.02 x lr, constant
    lr): the auto fields resolve to it; --optim.name=sgd gives SGD's own defaults; a config.yaml written before the
    optimiser fields were auto (no optim.name) trained with SGD and resumes with SGD."""
    cfg = C.resolve("fashion_mnist_40", overrides=["--algorithm.name=mixmatch"])
    o = cfg.optim
    assert (o.name, o.lr, o.weight_decay, o.schedule) == ("adamw", 0.002, 0.02, "constant")
    assert C.resolve("fashion_mnist_40", overrides=["--algorithm.name=remixmatch"]).optim == o  # the same code base
    o = C.resolve("fashion_mnist_40", overrides=["--algorithm.name=mixmatch", "--optim.name=sgd"]).optim
    assert (o.name, o.lr, o.weight_decay, o.schedule) == ("sgd", 0.03, 5e-4, "cosine")
    old = yaml.safe_load(C.to_yaml(cfg))
    old["optim"] = {k: v for k, v in old["optim"].items() if k not in ("name", "schedule")}
    old["optim"].update(lr=0.03, weight_decay=5e-4)  # an SGD run of then: the fields it had, SGD's values
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    loaded = C.from_dict(C.load_saved(tmp_path / "config.yaml"))
    sgd = dataclasses.replace(cfg.optim, name="sgd", lr=0.03, weight_decay=5e-4, schedule="cosine")
    assert loaded == dataclasses.replace(cfg, optim=sgd)
