"""SimCLR (Chen et al., ICML 2020, arXiv:2002.05709): self-supervised pretraining of the encoder.

Two SimCLR views (semisup.data.simclr_aug: random resized crop, flip, colour distortion) of every
image of the step, labelled and unlabelled alike (pretraining ignores the labels and uses all
images), go through the encoder and a projection head g (Linear(D, D) - BN - ReLU - Linear(D, proj_dim)
- BN: the paper's 2-layer MLP, 128 outputs, with the reference code's batch norm on every layer, see
SimCLRState); the loss is NT-Xent of the projections with temperature tau (paper: 0.5 for its CIFAR-10
batch sizes, 0.1 - 0.2 for large batches):

    L = nt_xent(g(f(view_1)), g(f(view_2)), tau)

The projection head lives in the state module, so the loop optimises it with the encoder and
checkpoints it; it is never part of the classifier (encoder.pt, written by ``semisup pretrain``,
holds encoder weights only), as the paper discards g after pretraining. No labelled loss: ``loss_x``
is reported as 0 for the loop's bookkeeping; ``pseudo_label`` is the (untrained) head's prediction with
``mask`` 0: no pseudo-label is used.

Deviations: negatives are the other images of this process's batch (under DDP the paper gathers all
devices' projections; here the loss is per rank, with per-rank batch norm); SGD with momentum and a
cosine schedule with linear warm-up (``semisup pretrain``'s defaults) instead of LARS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import losses
from ..config.rules import AT_LEAST_1, POSITIVE, Range, check_fields, param
from .contract import StepOutput
from .registry import register


class SimCLRState(nn.Module):
    """The trainable projection head g: (N, D) features -> (N, proj_dim).

    bn=True (the reference, google-research/simclr tf2/model.py ProjectionHead): every linear layer is followed
    by batch norm and has no bias (BN's shift replaces it); the last BN has no shift either (``center=False``:
    its bias is held at zero, not trained) and no ReLU. bn=False: Linear - ReLU - Linear with biases."""

    def __init__(self, num_features: int, hidden: int, proj_dim: int, bn: bool = True):
        super().__init__()
        if not bn:
            self.head = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(inplace=True),
                                      nn.Linear(hidden, proj_dim))
            return
        last = nn.BatchNorm1d(proj_dim)
        last.bias.requires_grad_(False)  # center=False: scale only
        self.head = nn.Sequential(nn.Linear(num_features, hidden, bias=False), nn.BatchNorm1d(hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim, bias=False), last)

    def forward(self, feats):
        return self.head(feats)


@register
@dataclass(frozen=True)
class SimCLR:
    name: ClassVar[str] = "simclr"
    mu: ClassVar[int] = 7  # train.mu=auto: semisup pretrain's default batch
    views_l: ClassVar[tuple] = ("simclr", "simclr2")
    views_u: ClassVar[tuple] = ("simclr", "simclr2")

    temperature: float = param(0.5, POSITIVE)
    proj_dim: int = param(128, AT_LEAST_1)
    # 0 -> the encoder's feature dimension D, as the paper
    proj_hidden: int = param(0, Range(0, note="0 = the feature dimension"))
    proj_bn: bool = True  # batch norm on every layer of the projection head, as the reference code

    def validate(self):
        check_fields(self)

    def init_state(self, model, ctx):
        return SimCLRState(ctx.num_features, self.proj_hidden or ctx.num_features, self.proj_dim, self.proj_bn)

    def step(self, model, batch, state, progress):
        v1 = [batch.x_l["simclr"], *([batch.x_u["simclr"]] if batch.x_u else [])]  # (B, C, H, W), (U, C, H, W)
        v2 = [batch.x_l["simclr2"], *([batch.x_u["simclr2"]] if batch.x_u else [])]
        n = sum(len(v) for v in v1)  # B + U images, two views each
        out = model(torch.cat(v1 + v2))  # one forward: batch norm over both views, as the paper
        feats = out.features.float()  # (2n, D)
        with torch.autocast(feats.device.type, enabled=False):  # a small float32 MLP, like the model's head
            z = state(feats)  # (2n, proj_dim)
        loss = losses.nt_xent(z[:n], z[n:], self.temperature)
        # The classifier head is not trained here, but DDP wants every parameter in the graph: a zero
        # term keeps it there (its gradient is exactly 0).
        loss = loss + 0.0 * out.logits.sum()
        terms = {"loss_x": torch.zeros((), device=loss.device), "loss_nt_xent": loss}
        if batch.x_u:
            U = len(batch.x_u["simclr"])
            B = len(batch.x_l["simclr"])
            pl = out.logits[B:B + U].detach().argmax(1)  # (U,) the untrained head's prediction
            return StepOutput(loss, terms, pl, torch.zeros(U, device=loss.device))
        return StepOutput(loss, terms)
