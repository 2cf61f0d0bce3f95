"""What a config value must be, declared on the field that holds it, and the one validator that reads it.

A field declares its rule as metadata: ``lr: float = param(0.03, POSITIVE)`` or
``schedule: str = param("cosine", one_of(*LR_SCHEDULES))``. :func:`check_fields` checks every field of
any config dataclass (a section of :class:`~semisup.config.Config` or an algorithm's hyper-parameters) against
its rule, so a range is written once, next to its default, and every value out of range fails with the same
one-line message: ``optim.lr=-0.1 is out of range: must be > 0``. Rules that involve several fields stay in
the dataclass's own ``validate()`` (an algorithm's) or in ``Config.validate()`` (across sections).
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

RULE = "rule"  # the metadata key of a field's rule


def out_of_range(where: str, value: Any, must: str) -> ConfigError:
    """The one message of a value that breaks its rule: ``where=value is out of range: must be MUST``."""
    return ConfigError(f"{where}={value!r} is out of range: must be {must}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _g(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """A number between ``lo`` and ``hi`` (None: unbounded; ``*_open``: the bound itself excluded), or one of
    the values ``also`` maps to its words ({"auto": "auto"}); ``note`` follows the range in the message."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""
    also: tuple = ()  # ((value, words), ...) accepted besides the range, e.g. (("auto", "auto"),)

    def ok(self, v: Any) -> bool:
        if any(v == a and type(v) is type(a) for a, _ in self.also):
            return True
        if not _number(v):
            return False
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def must(self) -> str:
        """In words: '> 0', 'in [0, 1)', 'auto or >= 0', '>= 1 (N1 / NK; 1 means balanced)'."""
        if self.hi is None:
            text = f"{'>' if self.lo_open else '>='} {_g(self.lo)}"
        elif self.lo is None:
            text = f"{'<' if self.hi_open else '<='} {_g(self.hi)}"
        else:
            text = f"in {'(' if self.lo_open else '['}{_g(self.lo)}, {_g(self.hi)}{')' if self.hi_open else ']'}"
        text = " or ".join([*(words for _, words in self.also), text])
        return f"{text} ({self.note})" if self.note else text

    def message(self, where: str, v: Any) -> str:
        return str(out_of_range(where, v, self.must()))


@dataclass(frozen=True)
class OneOf:
    """One of some names. Names of registered things come from their registry (``one_of(*LR_SCHEDULES)``),
    never a copied list."""

    names: tuple[str, ...]

    def ok(self, v: Any) -> bool:
        return isinstance(v, str) and v in self.names

    def must(self) -> str:
        *head, last = self.names
        return f"{', '.join(head)} or {last}" if head else last

    def message(self, where: str, v: Any) -> str:
        return str(out_of_range(where, v, self.must()))


Rule = Range | OneOf

POSITIVE = Range(0, lo_open=True)
NONNEG = Range(0)
AT_LEAST_1 = Range(1)
UNIT = Range(0, 1)
UNIT_OPEN = Range(0, 1, hi_open=True)


def one_of(*names: str) -> OneOf:
    """``one_of("sgd", "adamw")``, ``one_of(*LR_SCHEDULES)``."""
    return OneOf(tuple(names))


def param(default: Any, rule: Rule) -> Any:
    """A dataclass field with ``default`` and the rule its value must keep (read by :func:`check_fields`)."""
    return field(default=default, metadata={RULE: rule})


def check_fields(obj: Any, section: str = "algorithm") -> None:
    """Check every field of the config dataclass ``obj`` against its rule (in declaration order); the first value
    that breaks one raises ConfigError naming ``section.field``. None passes: the field's type allowed it.
    Building a config calls it for every section; an algorithm's ``validate()`` calls it too, so that validating
    an algorithm built in code checks everything."""
    for f in dataclasses.fields(obj):
        rule = f.metadata.get(RULE)
        v = getattr(obj, f.name)
        if rule is not None and v is not None and not rule.ok(v):
            raise ConfigError(rule.message(f"{section}.{f.name}", v))


def _copy(f: dataclasses.Field, defaults: dict) -> Any:
    """A new field declared as ``f`` (a field object belongs to one class), its default from ``defaults`` if there."""
    if f.name in defaults:
        return field(default=defaults[f.name], metadata=f.metadata)
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=f.metadata)
    return field(default=f.default, metadata=f.metadata)


def borrow(base: type, *names: str, **defaults: Any) -> Callable[[type], type]:
    """Class decorator, below ``@dataclass``: the class's first fields are ``base``'s fields ``names`` (all of
    them when none are named), declared as ``base`` declares them (type, default, rule), then its own fields.
    A composed algorithm (DASO on FixMatch) so shares its base's hyper-parameters instead of copying them,
    with exactly the keys it names, in order; ``defaults`` gives a borrowed field another default. Stacked
    decorators put the upper one's fields first (each puts its fields before those already there)."""
    picked = [f for f in dataclasses.fields(base) if not names or f.name in names]
    missing = sorted(set(names) - {f.name for f in picked} | set(defaults) - {f.name for f in picked})
    if missing:
        raise TypeError(f"{base.__name__} has no field {missing[0]!r} to borrow")
    hints = typing.get_type_hints(base)

    def deco(cls: type) -> type:
        own = dict(cls.__dict__.get("__annotations__", {}))
        clash = [f.name for f in picked if f.name in own]
        if clash:
            raise TypeError(f"{cls.__name__} declares {clash[0]!r} itself and borrows it from {base.__name__}")
        for f in picked:
            setattr(cls, f.name, _copy(f, defaults))
        cls.__annotations__ = {**{f.name: hints[f.name] for f in picked}, **own}
        return cls

    return deco
