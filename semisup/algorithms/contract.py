"""The algorithm contract: what the loop asks of an algorithm and what one step gives back.

An algorithm is a frozen dataclass of its own hyper-parameters (``algorithm.*`` in the config) that
satisfies :class:`Algorithm`. It never calls backward(), touches the optimizer, the schedule or the
EMA: the loop does (``semisup/loop``). It never sees the hidden labels of the unlabelled batch: the
loop scores its pseudo-labels against them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from torch import Tensor, nn


@dataclass
class Batch:
    x_l: dict[str, Tensor]  # labelled views: name -> float (B, C, H, W)
    y_l: Tensor  # (B,) int64
    x_u: dict[str, Tensor] = field(default_factory=dict)  # unlabelled views: name -> float (U, C, H, W)
    step: int = 0  # global optimisation step (for algorithms that refresh something every N steps)


@dataclass(frozen=True)
class Context:
    """Facts about the run an algorithm may use when it builds its state."""

    num_classes: int
    labelled_counts: np.ndarray  # (K,) labelled images per class
    num_features: int  # the model's feature dimension
    steps: int  # total optimisation steps
    device: object | None = None
    ema: float = 0.999  # the loop's EMA decay (optim.ema) for evaluation; 0 = no EMA, evaluation uses the model
    ema_warmup: str = "recent"  # optim.ema_warmup: how the decay rises to ``ema`` (ema.decay_at)


@dataclass
class StepOutput:
    """One step's result.

    loss          the scalar the loop back-propagates
    terms         scalar tensors logged as training statistics, in this order: ``loss_*`` keys are the loss
                  terms (differentiable, so a test can back-propagate one alone), others diagnostics
    pseudo_label  (U,) the pseudo-label of each unlabelled image, or None (no unlabelled term)
    mask          (U,) 0/1 (or a weight in [0, 1]): which pseudo-labels the loss used
    other_labels  name -> (U,) pseudo-labels of other classifiers (DASO's linear and similarity ones, ABC's
                  balanced head), scored unmasked as ``pseudo_label_<name>``
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    pseudo_label: Tensor | None = None
    mask: Tensor | None = None
    other_labels: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Algorithm(Protocol):
    """What every registered algorithm provides (tests/algorithms/test_contract.py checks each one).

    name        its registry name (``algorithm.name``)
    mu          its own unlabelled-to-labelled batch ratio (what ``train.mu=auto`` resolves to)
    views_l     the views of the labelled batch it needs, e.g. ("weak",)
    views_u     the views of the unlabelled batch, e.g. ("weak", "strong"); () for none. A view name's
                prefix picks the augmentation: "weak", "strong", "simclr" ("strong2", "weak_3" ...)

    Optional class attributes, what the config's ``auto`` values resolve to for it:
    strong      its strong augmentation (``data.strong=auto``; default randaugment)
    optim       its optimiser (``optim.name``, ``lr``, ``weight_decay``, ``schedule`` = auto), e.g.
                {"name": "adamw", "lr": 0.002}; default: SGD with config.schema.OPTIMISER_DEFAULTS
    """

    name: ClassVar[str]
    mu: ClassVar[int]
    views_l: ClassVar[tuple]
    views_u: ClassVar[tuple]

    def validate(self) -> None:
        """Raise ConfigError for a value out of its field's rule (``config.rules.check_fields``) or a combination
        of hyper-parameters that cannot work."""

    def init_state(self, model: nn.Module, ctx: Context) -> nn.Module | None:
        """Its own state (buffers, trainable heads; checkpointed with state_dict()), or None."""

    def step(self, model: nn.Module, batch: Batch, state: nn.Module | None, progress: float) -> StepOutput:
        """The loss of one batch; ``progress`` = step / total steps, in [0, 1)."""


@runtime_checkable
class Predicts(Protocol):
    """Optional: an algorithm whose inference is not ``model(x).logits`` (ABC's and ACR's balanced head).
    ``ema`` says whether ``model`` is the loop's EMA copy (then the algorithm uses its own EMA head)."""

    def predict(self, model: nn.Module, x: Tensor, state: nn.Module | None, ema: bool = True) -> Tensor:
        """x (N, C, H, W) float -> logits (N, K)."""


def own_predict(alg) -> bool:
    """True when ``alg`` brings its own inference (:class:`Predicts`)."""
    return isinstance(alg, Predicts)
