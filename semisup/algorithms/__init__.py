"""The algorithms; importing this package registers every one in ``ALGORITHMS`` (``registry.py``).

An algorithm is a frozen dataclass of its own hyper-parameters that satisfies the ``Algorithm``
protocol of ``contract.py`` (name, mu, views_l, views_u, validate, init_state, step -> StepOutput,
optional predict); docs/architecture.md says how to add one.
"""
import importlib
import pkgutil

from .contract import Algorithm, Batch, Context, StepOutput
from .registry import ALGORITHMS

# every module of this package is imported, so a new algorithm registers itself by existing: adding one
# is one new file (and its test), nothing to list here
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["ALGORITHMS", "Algorithm", "Batch", "Context", "StepOutput"]
