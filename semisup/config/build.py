"""Building a Config: from a nested mapping (``from_dict``), or from its layers (``resolve``: defaults < presets <
config file < command line), and back to YAML (``to_yaml``, a run's config.yaml)."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..errors import ConfigError
from .parse import build_section, coerce, load_preset, load_yaml, merge, parse_overrides
from .schema import SECTIONS, Config, auto_bn_momentum, auto_optim

SECTION_NAMES = ", ".join([*SECTIONS, "algorithm"])


def _resolve_auto(kw: dict, alg_cls) -> dict:
    """The sections with each ``auto`` value replaced by what it means for this run (config.yaml holds that)."""
    if kw["model"].bn_momentum == "auto":
        kw["model"] = dataclasses.replace(kw["model"], bn_momentum=auto_bn_momentum(kw["train"].steps))
    if kw["train"].mu == "auto":
        kw["train"] = dataclasses.replace(kw["train"], mu=alg_cls.mu)
    if kw["data"].split == "auto":
        kw["data"] = dataclasses.replace(kw["data"], split="all" if kw["data"].name in ("pool", "csv") else "balanced")
    if kw["data"].strong == "auto":
        kw["data"] = dataclasses.replace(kw["data"], strong=getattr(alg_cls, "strong", "randaugment"))
    kw["optim"] = auto_optim(kw["optim"], getattr(alg_cls, "optim", {}))
    return kw


def from_dict(raw: dict) -> Config:
    """Build a Config from a nested dict (YAML-like); every key is checked, then Config.validate()."""
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping of sections")
    from ..algorithms import ALGORITHMS  # late import: algorithms import config types

    unknown = sorted(set(raw) - set(SECTIONS) - {"algorithm"})
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; sections: {SECTION_NAMES}")
    kw = {sec: build_section(cls, raw.get(sec) or {}, sec) for sec, cls in SECTIONS.items()}
    if not isinstance(raw.get("algorithm") or {}, dict):
        raise ConfigError("section 'algorithm' must be a mapping with at least name: ...")
    alg_raw = dict(raw.get("algorithm") or {})
    name = coerce(alg_raw.pop("name", "fixmatch"), str, "algorithm.name")
    alg_cls = ALGORITHMS.get(name)
    alg = build_section(alg_cls, alg_raw, "algorithm")
    cfg = Config(algorithm=alg, **_resolve_auto(kw, alg_cls))
    cfg.validate()
    return cfg


def force_algorithm(raw: dict, name: str) -> dict:
    """``raw`` with algorithm ``name``; an algorithm section made for another algorithm (a preset's) is dropped:
    its fields, e.g. fixmatch's threshold, do not apply."""
    sec = dict(raw.get("algorithm") or {})
    return {**raw, "algorithm": {**(sec if sec.get("name", name) == name else {}), "name": name}}


def _layer(source: str | Path | dict, read) -> dict:
    return source if isinstance(source, dict) else read(source)


def resolve(preset: str | None = None, config_file: str | Path | dict | None = None,
            overrides: list[str] | dict | None = None, *, under: Sequence[str | dict] = (),
            algorithm: str | None = None, forced: dict | None = None) -> Config:
    """The config of a run, each layer over the ones before: the dataclass defaults < ``under`` (presets by name,
    or mappings: a command's own defaults, such as pretraining's preset or an encoder's model and data) <
    ``preset`` (over its base presets) < ``config_file`` (a path, or a mapping already read: a run's saved
    config) < ``overrides`` (``--section.key=value`` strings or their parsed mapping) < ``forced`` (what a
    command sets whatever the user says). ``algorithm`` fixes algorithm.name below the overrides: a preset's or
    file's section for another algorithm is dropped (force_algorithm); so does an algorithm.name override (e.g.
    ``--preset mnist_pl_seed --algorithm.name=supervised``: Pseudo-Label's alpha_f is not supervised's)."""
    raw: dict = {}
    for layer in under:
        raw = merge(raw, _layer(layer, load_preset))
    if preset:
        raw = merge(raw, load_preset(preset))
    if config_file:
        raw = merge(raw, _layer(config_file, load_yaml))
    if algorithm:
        raw = force_algorithm(raw, algorithm)
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        name = (over.get("algorithm") or {}).get("name")
        if name:  # --algorithm.name=X over a preset made for another algorithm: its fields do not apply to X
            raw = force_algorithm(raw, name)
        raw = merge(raw, over)
    return from_dict(merge(raw, forced or {}))


def _raw(cfg: Config) -> dict:
    """cfg as a nested dict whose algorithm section starts with its name (config.yaml's layout)."""
    raw = cfg.to_dict()
    raw["algorithm"] = {"name": cfg.algorithm.name, **dataclasses.asdict(cfg.algorithm)}
    return raw


def replace(cfg: Config, **sections: dict) -> Config:
    """Return a copy of ``cfg`` with some keys changed: ``replace(cfg, train={"steps": 5})``."""
    return from_dict(merge(_raw(cfg), sections))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(_raw(cfg), sort_keys=False)
