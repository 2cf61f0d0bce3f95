"""The algorithm registry. An algorithm is a frozen dataclass of its own hyper-parameters with

    views_l, views_u          which views of the labelled / unlabelled batch it needs
    mu                        its own unlabelled-to-labelled batch ratio (what train.mu=auto resolves to)
    init_state(model, ctx)    optional nn.Module of buffers (checkpointed with state_dict())
    step(model, batch, state, progress) -> (loss, stats)

It never calls backward(), touches the optimizer or the schedule: the loop in train.py does.
``stats`` holds detached-or-not scalar tensors for logging (keys ``loss_*`` are the loss terms,
kept differentiable so tests can back-propagate one term alone) and, for SSL algorithms, the
reserved keys ``pseudo_label`` (U,) and ``mask`` (U,) that the loop scores against the hidden
labels of the unlabelled batch (which algorithms never see).
"""
from ..registry import Registry
from .base import Batch, Context

ALGORITHMS: Registry = Registry("algorithm")


def register(cls):
    """Class decorator: registers an algorithm dataclass under its ``name`` class attribute."""
    ALGORITHMS.register(cls.name)(cls)
    return cls


from . import abc, acr, daso, fixmatch, mean_teacher, mixmatch, pi_model, pseudo_label, remixmatch, simclr, supervised  # noqa: E402,F401  (registration side effects)

__all__ = ["ALGORITHMS", "Batch", "Context", "register"]
