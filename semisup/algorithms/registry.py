"""The registry of algorithms, apart from the package that fills it: algorithm modules import
``register`` from here, and ``semisup.algorithms`` imports the algorithm modules, so neither imports
the other. Look names up through ``semisup.algorithms.ALGORITHMS``: importing the package is what
registers every algorithm."""
from ..registry import Registry

ALGORITHMS: Registry = Registry("algorithm")


def register(cls):
    """Class decorator: registers an algorithm dataclass under its ``name`` class attribute."""
    ALGORITHMS.register(cls.name)(cls)
    return cls
