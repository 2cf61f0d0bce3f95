import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from semisup import config as C
from semisup.errors import ConfigError


def test_defaults_build_and_round_trip_through_yaml(tmp_path):
    cfg = C.from_dict({})
    assert cfg.algorithm.name == "fixmatch" and cfg.train.batch_size == 64 and cfg.train.mu == 7
    assert cfg.optim.lr == 0.03 and cfg.optim.ema == 0.999 and cfg.algorithm.threshold == 0.95
    f = tmp_path / "c.yaml"
    f.write_text(C.to_yaml(cfg))
    assert C.resolve(config_file=str(f)) == cfg


def test_precedence_defaults_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {steps: 7, mu: 3}\nalgorithm: {name: fixmatch, threshold: 0.8}\n")
    cfg = C.resolve(config_file=str(f), overrides=["--train.steps=9", "--algorithm.lambda_u", "2"])
    assert cfg.train.steps == 9 and cfg.train.mu == 3  # cli beats file, file beats default
    g = tmp_path / "m.yaml"
    g.write_text("train: {mu: 3}\nalgorithm: {name: mixmatch}\n")
    assert C.resolve(config_file=str(g)).train.mu == 3  # a file's mu beats the algorithm's own (auto)
    assert cfg.algorithm.threshold == 0.8 and cfg.algorithm.lambda_u == 2.0


def test_types_are_coerced_from_strings():
    cfg = C.resolve(overrides=["--run.deterministic=true", "--data.labels_per_class=4", "--data.root=none",
                               "--optim.lr=1e-2", "--data.gamma_u=50"])
    assert cfg.run.deterministic is True and cfg.data.labels_per_class == 4 and cfg.data.root is None
    assert cfg.optim.lr == 0.01 and cfg.data.gamma_u == 50.0


@pytest.mark.parametrize("overrides, msg", [
    (["--train.stepz=3"], "unknown config key train.stepz"),
    (["--bogus.x=1"], "unknown config section"),
    (["--train.steps=ten"], "train.steps: expected an integer"),
    (["--train.steps=1.5"], "expected an integer"),
    (["--run.deterministic=maybe"], "expected true or false"),
    (["--optim.lr=-0.1"], "optim.lr=-0.1 is out of range"),
    (["--optim.ema=nan"], "finite"),
    (["--optim.lr=nan"], "optim.lr='nan' is out of range: must be auto or > 0"),
    (["--optim.name=adam"], "optim.name"),
    (["--algorithm.threshold=1.5"], "algorithm.threshold=1.5 is out of range"),
    (["--algorithm.name=nope"], "unknown algorithm 'nope'"),
    (["--algorithm.nope=1"], "unknown config key algorithm.nope"),
    (["--data.gamma_l=0.5"], "data.gamma_l=0.5 is out of range"),
    (["train.steps=3"], "overrides look like"),
    (["--steps=3"], "use --section.key=value"),
    (["--train.steps"], "needs a value"),
])
def test_bad_overrides_raise_one_clear_error(overrides, msg):
    with pytest.raises(ConfigError, match=msg):
        C.resolve(overrides=overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        C.resolve(config_file=str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.resolve(config_file=str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        C.resolve(config_file=str(lst))
    with pytest.raises(ConfigError, match="unknown preset"):
        C.resolve(preset="no_such_preset")


def test_every_preset_resolves():
    assert C.preset_names(), "presets ship with the package"
    for name in C.preset_names():
        cfg = C.resolve(preset=name)
        assert isinstance(cfg, C.Config)


def test_configs_are_frozen_and_replace_checks():
    cfg = C.from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]
    cfg2 = C.replace(cfg, train={"steps": 5}, algorithm={"threshold": 0.5})
    assert cfg2.train.steps == 5 and cfg2.algorithm.threshold == 0.5 and cfg.train.steps != 5
    with pytest.raises(ConfigError):
        C.replace(cfg, train={"nope": 1})


_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                    st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["data", "model", "optim", "train", "run", "algorithm", "x"]),
                       st.one_of(_values, st.dictionaries(st.text(max_size=12) | st.sampled_from(
                           ["steps", "lr", "name", "threshold", "seed", "amp", "split", "root", "ema"]),
                           _values, max_size=4)), max_size=4))
def test_fuzz_any_input_gives_a_config_or_a_config_error(raw):
    try:
        cfg = C.from_dict(raw)
    except ConfigError:
        return
    assert isinstance(cfg, C.Config)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=4))
def test_fuzz_override_strings(argv):
    try:
        C.resolve(overrides=argv)
    except ConfigError:
        pass


@pytest.mark.parametrize("name, want", [("fixmatch", 7), ("mixmatch", 1), ("remixmatch", 1), ("pseudo_label", 1),
                                        ("pi_model", 1), ("mean_teacher", 1), ("daso", 2), ("acr", 1),
                                        ("abc", 1), ("supervised", 0)])
def test_mu_auto_is_the_algorithms_own_ratio(name, want, tmp_path):
    """train.mu=auto (the default) takes the algorithm's unlabelled ratio (MixMatch's paper: 1, FixMatch's: 7);
    resolved into the config (config.yaml holds the number); an explicit value, from a preset or the command
    line, wins."""
    cfg = C.resolve(overrides=[f"--algorithm.name={name}"])
    assert cfg.train.mu == want
    (tmp_path / "config.yaml").write_text(C.to_yaml(cfg))
    assert C.resolve(config_file=str(tmp_path / "config.yaml")) == cfg  # config.yaml round trip
    assert C.resolve(overrides=[f"--algorithm.name={name}", "--train.mu=3"]).train.mu == 3
    assert C.resolve(overrides=[f"--algorithm.name={name}", "--train.mu=auto"]).train.mu == want


@pytest.mark.parametrize("name, want", [("fixmatch", "randaugment"), ("remixmatch", "ctaugment"),
                                        ("daso", "randaugment_mc"), ("acr", "randaugment_mc"), ("abc", "randaugment")])
def test_strong_auto_is_the_algorithms_own_augmentation(name, want):
    """data.strong=auto (the default): the augmentation of the algorithm's reference code, resolved into the
    config; an explicit value wins."""
    assert C.resolve(overrides=[f"--algorithm.name={name}"]).data.strong == want
    assert C.resolve(overrides=[f"--algorithm.name={name}", "--data.strong=none"]).data.strong == "none"


ADAM_REF = ("adamw", 0.002, 0.02, "constant")  # the MixMatch / ReMixMatch / ABC codes' Adam
SGD_SHARED = ("sgd", 0.03, 5e-4, "cosine")


@pytest.mark.parametrize("name, want", [("mixmatch", ADAM_REF), ("remixmatch", ADAM_REF), ("abc", ADAM_REF),
                                        ("fixmatch", SGD_SHARED), ("pi_model", SGD_SHARED),
                                        ("mean_teacher", SGD_SHARED), ("daso", SGD_SHARED), ("acr", SGD_SHARED)])
def test_optim_auto_is_the_algorithms_own_optimiser(name, want):
    """optim.*=auto (the default): the optimiser of the algorithm's reference code where semisup follows it,
    else the shared SGD; --optim.name=sgd gives SGD's own values, not the algorithm's."""
    o = C.resolve(overrides=[f"--algorithm.name={name}"]).optim
    assert (o.name, o.lr, o.weight_decay, o.schedule) == want
    o = C.resolve(overrides=[f"--algorithm.name={name}", "--optim.name=sgd"]).optim
    assert (o.name, o.lr, o.weight_decay, o.schedule) == SGD_SHARED


@pytest.mark.parametrize("bad", ["many", "-1", "2.5"])
def test_mu_rejects_what_is_neither_auto_nor_a_count(bad):
    with pytest.raises(ConfigError, match="train.mu"):
        C.resolve(overrides=[f"--train.mu={bad}"])


def test_bn_momentum_auto_scales_with_the_run_length():
    """auto: FixMatch's 0.001 for long runs; 10 / steps for short ones (so that the running statistics do not
    still hold the initial network's at the end); resolved into the config, an explicit value wins."""
    from semisup.config import auto_bn_momentum
    from semisup.models import build_model

    assert auto_bn_momentum(None) == auto_bn_momentum(10_000) == auto_bn_momentum(2**20) == 0.001
    assert auto_bn_momentum(1000) == pytest.approx(0.01) and auto_bn_momentum(400) == pytest.approx(0.025)
    assert auto_bn_momentum(8) == 0.1 and auto_bn_momentum(0) == 0.1  # capped at PyTorch's default
    for steps, want in ((1000, 0.01), (6000, 10 / 6000), (250_000, 0.001)):
        cfg = C.resolve(overrides=[f"--train.steps={steps}"])
        assert cfg.model.bn_momentum == pytest.approx(want)
        assert C.from_dict(cfg.to_dict()).model.bn_momentum == cfg.model.bn_momentum  # config.yaml round trip
    assert C.resolve(overrides=["--train.steps=1000", "--model.bn_momentum=0.05"]).model.bn_momentum == 0.05
    for bad in ("fast", "0", "1.5"):
        with pytest.raises(ConfigError, match="model.bn_momentum"):
            C.resolve(overrides=[f"--model.bn_momentum={bad}"])
    m = build_model(C.ModelConfig(), 10, 1, 28)  # unresolved auto: the long-run value
    assert {b.momentum for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)} == {0.001}


def test_optimiser_auto_fields_follow_the_algorithm_then_the_chosen_optimiser():
    """optim.name/lr/weight_decay/schedule = auto: the algorithm's declared optimiser with its values; an
    explicit optimiser other than the declared one gets that optimiser's defaults (SGD's lr, not Adam's);
    explicit values always win; the resolved config (config.yaml) holds no auto."""
    from semisup.config.schema import OPTIMISER_DEFAULTS, OptimConfig, auto_optim

    adam = {"name": "adamw", "lr": 0.003, "weight_decay": 0.0, "schedule": "constant"}
    o = auto_optim(OptimConfig(), adam)
    assert (o.name, o.lr, o.weight_decay, o.schedule) == ("adamw", 0.003, 0.0, "constant")
    o = auto_optim(OptimConfig(name="sgd"), adam)
    assert (o.name, o.lr, o.weight_decay, o.schedule) == ("sgd", 0.03, 5e-4, "cosine")
    o = auto_optim(OptimConfig(lr=0.01, schedule="cosine"), adam)
    assert (o.name, o.lr, o.weight_decay, o.schedule) == ("adamw", 0.01, 0.0, "cosine")
    o = auto_optim(OptimConfig(name="adamw"), {})  # an algorithm without its own: AdamW's defaults
    assert (o.lr, o.weight_decay, o.schedule) == tuple(OPTIMISER_DEFAULTS["adamw"].values())
    cfg = C.resolve(overrides=["--algorithm.name=fixmatch"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == ("sgd", 0.03, 5e-4, "cosine")
    assert "auto" not in C.to_yaml(cfg).split("optim:")[1].split("train:")[0]
