"""semisup: semi-supervised image classification with one training loop for every algorithm."""
from __future__ import annotations

from .config import Config, from_dict, replace, resolve
from .errors import ConfigError, DataError, UserError
from .train import TrainResult  # noqa: E402  (loads the submodule first; the function below then owns the name)
from .train import train as _train

__version__ = "0.1.0"


def train(config: Config | dict, arrays: dict | None = None, resume: bool = False, overwrite: bool = False):
    """Train one run. ``config`` is a :class:`Config` or a nested dict of sections (as in YAML);
    ``arrays`` feeds the ``arrays`` dataset source. Returns a ``TrainResult``."""
    cfg = config if isinstance(config, Config) else from_dict(config)
    return _train(cfg, arrays=arrays, resume=resume, overwrite=overwrite)


def load(run_dir_or_checkpoint, raw: bool = False, device: str = "cpu", amp: str | None = None):
    """A trained run, ready for new images: ``semisup.load(run_dir).predict(images)``. The run's data is not
    needed. See :func:`semisup.inference.load` and :class:`semisup.inference.Predictor` (imported on first use)."""
    from .inference import load as _load

    return _load(run_dir_or_checkpoint, raw=raw, device=device, amp=amp)


__all__ = ["Config", "TrainResult", "ConfigError", "DataError", "UserError", "from_dict", "load", "replace", "resolve",
           "train"]
