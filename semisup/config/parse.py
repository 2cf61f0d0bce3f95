"""Reading configs: values coerced to the schema's types, ``--section.key=value`` overrides, YAML files and
presets (a preset may name a base preset, merged under it).

Unknown keys and values of the wrong type raise :class:`ConfigError` (never silently ignored), so a typo cannot
run the wrong experiment.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .rules import check_fields
from .schema import SECTIONS

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    """``X | Y | None``: None (or the strings none / null) where None is allowed, else the first type that fits."""
    args = typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in args:
            return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(value, a, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{where}: None is not allowed")


def _coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _coerce_int(value: Any, where: str) -> int:
    """An int, a float with an integer value (1e3), or a string of either; never a bool."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer():
                return int(f)
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _coerce_float(value: Any, where: str) -> float:
    """A finite float from a number or a string; never a bool."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    else:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(f):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return f


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(coerce(v, inner, where) for v in value)
    if tp is bool:
        return _coerce_bool(value, where)
    if tp is int:
        return _coerce_int(value, where)
    if tp is float:
        return _coerce_float(value, where)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def build_section(cls, values: dict, section: str):
    """Instantiate dataclass ``cls`` from ``values`` and check it: unknown keys, bad types and values that break
    their field's rule raise; so does an algorithm's ``validate()`` (its rules across fields)."""
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping of key: value, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {section}.{unknown[0]}; known keys in {section}: {', '.join(sorted(known))}"
        )
    obj = cls(**{k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})
    check_fields(obj, section)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()  # an algorithm's rules across fields
    return obj


def merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``, section by section (nested mappings merge, anything else replaces)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _split_override(a: str, args: list[str], i: int) -> tuple[str, str, int]:
    """One override at args[i]: (section.key, value, index of the next argument)."""
    if not a.startswith("--") or len(a) <= 2:
        raise ConfigError(f"unexpected argument {a!r}; overrides look like --section.key=value")
    body = a[2:]
    if "=" in body:
        key, val = body.split("=", 1)
        return key, val, i + 1
    if i + 1 >= len(args):
        raise ConfigError(f"{a} needs a value: --section.key=value")
    return body, args[i + 1], i + 2


def parse_overrides(args: list[str]) -> dict:
    """``["--train.steps=10", "--data.name", "digits"]`` -> nested dict of raw strings."""
    out: dict = {}
    i = 0
    while i < len(args):
        a = args[i]
        key, val, i = _split_override(a, args, i)
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"bad override {a!r}; use --section.key=value (e.g. --train.steps=100)")
        sec, k = parts
        if sec not in SECTIONS and sec != "algorithm":
            raise ConfigError(
                f"unknown config section {sec!r} in {a!r}; sections: {', '.join([*SECTIONS, 'algorithm'])}"
            )
        out.setdefault(sec, {})[k] = val
    return out


def load_yaml(path: str | Path) -> dict:
    """A YAML file holding a mapping of sections ({} when empty)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return data


# Keys added after runs were written, with the value that reproduces how such a run trained: a saved
# config.yaml without the key resumes (and compares, and is evaluated) with this value, not the new default.
# Keys whose default is the earlier behaviour need no entry. The optimiser's fields default to auto (the
# algorithm's own optimiser, e.g. MixMatch's Adam); a config saved without them trained with SGD and its values.
SAVED_BEFORE = {("optim", "ema_warmup"): "uniform", ("optim", "name"): "sgd", ("optim", "lr"): 0.03,
                ("optim", "weight_decay"): 5e-4, ("optim", "schedule"): "cosine"}
# The same for the fields of one algorithm (the algorithm section of a run of that algorithm): the reference
# defaults that came with the fields (ARL's alpha vector, ABC's soft targets and two strong views, ACR's
# presence estimate, SimCLR's batch-normed projection head) against the behaviour before them.
SAVED_BEFORE_ALGORITHM = {"fixmatch": {"arl_alpha": "inverse"},
                          "abc": {"soft_targets": False, "strong_views": 1},
                          "acr": {"u_estimate": "counts"},
                          "simclr": {"proj_bn": False}}


def fill_saved(raw: dict) -> dict:
    """A saved config (a mapping of sections, changed in place and returned) with the keys it predates filled
    as the run trained (SAVED_BEFORE, SAVED_BEFORE_ALGORITHM)."""
    for (sec, key), value in SAVED_BEFORE.items():
        if isinstance(raw.get(sec), dict):
            raw[sec].setdefault(key, value)
    alg = raw.get("algorithm")
    if isinstance(alg, dict):
        for key, value in SAVED_BEFORE_ALGORITHM.get(alg.get("name"), {}).items():
            alg.setdefault(key, value)
    return raw


def load_saved(path: str | Path) -> dict:
    """A run's config.yaml, with the keys it predates filled as it ran (fill_saved)."""
    return fill_saved(load_yaml(path))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """Preset ``name`` (semisup/configs/NAME.yaml) as a mapping of sections. A preset may name a base preset
    (top-level ``base: NAME``): the base is merged first, the preset's own keys over it; a chain that comes back
    to a preset it passed through is refused."""
    if name in _seen:
        raise ConfigError(f"preset {_seen[0]!r} has a cycle of base presets: {' -> '.join([*_seen, name])}")
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        if _seen:
            raise ConfigError(f"preset {_seen[-1]!r} names base preset {name!r}, which does not exist; choose one "
                              f"of: {', '.join(preset_names())}")
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    raw = load_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"preset {name!r}: base must be the name of another preset, got {base!r}")
    return merge(load_preset(base, (*_seen, name)), raw)
