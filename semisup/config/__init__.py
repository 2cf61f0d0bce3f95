"""Configuration: frozen dataclasses, YAML presets and ``--section.key=value`` overrides.

Precedence: dataclass defaults < base preset < preset < config file < command line (``resolve``). Unknown keys,
values of the wrong type and values that break their field's rule raise :class:`ConfigError` (never silently
ignored), so a typo cannot run the wrong experiment.

    rules.py    what a value must be (field metadata: ranges and choices) and check_fields
    schema.py   the sections' dataclasses, Config (with its rules across sections), SECTIONS
    parse.py    coercion, overrides, YAML files, presets (with base presets)
    build.py    from_dict, resolve, replace, to_yaml
"""
from ..errors import ConfigError
from .build import force_algorithm, from_dict, replace, resolve, to_yaml
from .parse import (
    PRESET_DIR,
    SAVED_BEFORE,
    SAVED_BEFORE_ALGORITHM,
    build_section,
    coerce,
    fill_saved,
    load_preset,
    load_saved,
    load_yaml,
    merge,
    parse_overrides,
    preset_names,
)
from .rules import check_fields
from .schema import (
    SECTIONS,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    auto_bn_momentum,
    cache_root,
)

__all__ = ["PRESET_DIR", "SAVED_BEFORE", "SAVED_BEFORE_ALGORITHM", "SECTIONS", "Config", "ConfigError",
           "DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "auto_bn_momentum",
           "build_section", "cache_root", "check_fields", "coerce", "fill_saved", "force_algorithm", "from_dict",
           "load_preset", "load_saved", "load_yaml", "merge", "parse_overrides", "preset_names", "replace",
           "resolve", "to_yaml"]
