"""Config rules as field metadata: the one validator (check_fields) against each kind of rule, every rule of every
section and algorithm enforced, borrowed fields, and the rules across sections (Config.validate)."""
import dataclasses
from dataclasses import dataclass

import pytest

from semisup import config as C
from semisup.algorithms import ALGORITHMS
from semisup.config.rules import (
    AT_LEAST_1,
    NONNEG,
    POSITIVE,
    RULE,
    UNIT,
    UNIT_OPEN,
    Range,
    borrow,
    check_fields,
    one_of,
    param,
)
from semisup.ema import WARMUPS
from semisup.errors import ConfigError
from semisup.losses import ALPHAS
from semisup.schedules import LR_SCHEDULES


@dataclass(frozen=True)
class Toy:
    rate: float = param(0.5, UNIT)
    count: int | None = param(None, AT_LEAST_1)
    mode: str = param("fast", one_of("fast", "slow"))
    free: float = -3.0  # no rule: anything of its type


@pytest.mark.parametrize("rule, words", [
    (POSITIVE, "> 0"), (NONNEG, ">= 0"), (AT_LEAST_1, ">= 1"), (UNIT, "in [0, 1]"), (UNIT_OPEN, "in [0, 1)"),
    (Range(0, 100, lo_open=True), "in (0, 100]"), (Range(hi=5, hi_open=True), "< 5"),
    (Range(0, also=(("auto", "auto"),)), "auto or >= 0"), (Range(2, also=((0, "0 (off)"),)), "0 (off) or >= 2"),
    (Range(1, note="1 means balanced"), ">= 1 (1 means balanced)"), (one_of("a", "b", "c"), "a, b or c"),
    (one_of("only"), "only"),
])
def test_rules_say_in_words_what_a_value_must_be(rule, words):
    assert rule.must() == words


def test_a_range_holds_numbers_within_its_bounds_and_its_named_extras():
    assert UNIT.ok(0) and UNIT.ok(1.0) and not UNIT.ok(1.01) and not UNIT_OPEN.ok(1.0)
    assert not POSITIVE.ok(0) and POSITIVE.ok(1e-9) and not NONNEG.ok(True) and not NONNEG.ok("3")
    mu = Range(0, also=(("auto", "auto"),))
    assert mu.ok("auto") and mu.ok(0) and not mu.ok("many") and not mu.ok(-1)
    probe = Range(2, also=((0, "0 (off)"),))
    assert probe.ok(0) and not probe.ok(1) and probe.ok(2) and not probe.ok(0.0 + 1)


def test_check_fields_reads_each_kind_of_rule_with_one_message():
    check_fields(Toy())  # defaults keep their rules
    check_fields(Toy(count=None, free=-1e9))  # None passes; no rule, no check
    cases = [({"rate": 1.5}, "toy.rate=1.5 is out of range: must be in [0, 1]"),
             ({"count": 0}, "toy.count=0 is out of range: must be >= 1"),
             ({"mode": "warp"}, "toy.mode='warp' is out of range: must be fast or slow")]
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as e:
            check_fields(Toy(**kwargs), "toy")
        assert str(e.value) == message


def test_choices_that_name_registered_things_come_from_their_registry():
    """optim.schedule: the schedules' table; optim.ema_warmup: ema.WARMUPS; arl_alpha: losses.ALPHAS;
    algorithm.name: the algorithm registry (ALGORITHMS.get)."""
    assert dict(_ruled(C.OptimConfig))["schedule"].names == ("auto", *LR_SCHEDULES)
    assert dict(_ruled(C.OptimConfig))["ema_warmup"].names == WARMUPS
    assert dict(_ruled(ALGORITHMS.get("fixmatch")))["arl_alpha"].names == ALPHAS
    for name in LR_SCHEDULES:
        assert C.resolve(overrides=[f"--optim.schedule={name}"]).optim.schedule == name
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'; choose one of: abc, acr"):
        C.resolve(overrides=["--algorithm.name=nope"])


@pytest.mark.parametrize("key, value, message", [
    ("optim.schedule", "step", "optim.schedule='step' is out of range: must be auto, cosine, cosine_zero or constant"),
    ("optim.ema_warmup", "x", "optim.ema_warmup='x' is out of range: must be recent, uniform or none"),
    ("train.nonfinite", "ignore", "train.nonfinite='ignore' is out of range: must be stop or skip"),
    ("train.mu", "-1", "train.mu=-1 is out of range: must be auto or >= 0"),
    ("data.gamma_l", "0.5", "data.gamma_l=0.5 is out of range: must be >= 1 (N1 / NK; 1 means balanced)"),
    ("algorithm.threshold", "1.5", "algorithm.threshold=1.5 is out of range: must be in [0, 1]"),
])
def test_section_values_are_checked_against_their_field_rule(key, value, message):
    with pytest.raises(ConfigError) as e:
        C.resolve(overrides=[f"--{key}={value}"])
    assert str(e.value).startswith(message)


def _bad(rule):
    """A value that breaks ``rule``."""
    if isinstance(rule, Range):
        if rule.lo is not None:
            return rule.lo if rule.lo_open else rule.lo - 1
        return rule.hi if rule.hi_open else rule.hi + 1
    return "no_such_choice"


def _ruled(cls):
    return [(f.name, f.metadata[RULE]) for f in dataclasses.fields(cls) if RULE in f.metadata]


@pytest.mark.parametrize("section", list(C.SECTIONS))
def test_every_section_rule_is_enforced(section):
    ruled = _ruled(C.SECTIONS[section])
    assert ruled
    for key, rule in ruled:
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            C.from_dict({section: {key: _bad(rule)}})


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_rule_is_enforced(name):
    """Building a config checks every field rule of the algorithm; defaults keep them."""
    cls = ALGORITHMS.get(name)
    check_fields(cls())
    for key, rule in _ruled(cls):
        with pytest.raises(ConfigError, match=f"algorithm.{key}="):
            C.from_dict({"algorithm": {"name": name, key: _bad(rule)}})


@pytest.mark.parametrize("name, base, keys", [
    ("daso", "fixmatch", ["threshold", "lambda_u", "T"]), ("abc", "fixmatch", ["threshold", "lambda_u", "T"]),
    ("acr", "fixmatch", ["threshold", "lambda_u", "T"]),
    ("daso_remixmatch", "remixmatch", ["K", "T", "alpha", "lambda_u", "lambda_u1", "lambda_rot", "rampup",
                                       "dist_buffer"]),
    ("daso_remixmatch", "daso", ["queue_len", "T_proto", "T_dist", "lambda_align", "warmup", "dist_period"]),
])
def test_composed_algorithms_share_their_base_declarations(name, base, keys):
    mine = {f.name: f for f in dataclasses.fields(ALGORITHMS.get(name))}
    theirs = {f.name: f for f in dataclasses.fields(ALGORITHMS.get(base))}
    for k in keys:
        assert (mine[k].default, mine[k].metadata[RULE]) == (theirs[k].default, theirs[k].metadata[RULE])
    names = list(mine)
    assert names[names.index(keys[0]):names.index(keys[0]) + len(keys)] == keys  # in the base's order


def test_borrow_puts_the_base_fields_first_and_refuses_what_it_cannot_borrow():
    @dataclass(frozen=True)
    @borrow(Toy, "mode", "rate", rate=0.25)
    class Composed:
        own: int = param(3, NONNEG)

    assert [f.name for f in dataclasses.fields(Composed)] == ["rate", "mode", "own"]
    assert Composed().rate == 0.25 and Toy().rate == 0.5  # another default, the same rule
    with pytest.raises(ConfigError, match="c.rate=2"):
        check_fields(Composed(rate=2.0), "c")
    with pytest.raises(TypeError, match="no field 'speed'"):
        borrow(Toy, "speed")
    with pytest.raises(TypeError, match="declares 'rate' itself"):
        @borrow(Toy, "rate")
        class Clash:
            rate: float = 0.1


def test_config_validate_train_patience_needs_a_validation_hold_out():
    with pytest.raises(ConfigError, match=r"train.patience=2 \(early stopping\) needs a validation hold-out: set "
                                          r"data.val_per_class >= 1"):
        C.resolve(overrides=["--train.patience=2"])
    cfg = C.resolve(overrides=["--train.patience=2", "--data.val_per_class=1"])
    assert cfg.train.patience == 2
    with pytest.raises(ConfigError, match="needs a validation hold-out"):
        C.replace(cfg, data={"val_per_class": 0})


def test_config_validate_unlabelled_views_need_an_unlabelled_batch():
    for name in ("fixmatch", "simclr", "abc"):
        with pytest.raises(ConfigError, match=f"algorithm '{name}' needs unlabelled data: set train.mu >= 1"):
            C.resolve(overrides=[f"--algorithm.name={name}", "--train.mu=0"])
    assert C.resolve(overrides=["--algorithm.name=supervised"]).train.mu == 0  # auto: no unlabelled views
    assert C.resolve(overrides=["--algorithm.name=supervised", "--train.mu=0"]).train.mu == 0
