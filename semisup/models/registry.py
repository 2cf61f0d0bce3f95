"""The registry of model factories ``f(cfg, num_classes, in_channels, image_size) -> Classifier``, apart from
the package that fills it: the model files import ``MODELS`` from here and register themselves, and
``semisup.models`` imports them, so neither imports the other. Look names up through
``semisup.models.MODELS``: importing the package is what registers every model."""
from ..registry import Registry

MODELS = Registry("model")
