"""ACR's adjustment math (Wei & Gan, CVPR 2023): logit adjustment and the anchor-weighted adaptive
adjustment strength. Pure functions; shapes: K classes, A anchors."""
from __future__ import annotations

import torch
from torch import Tensor


def logit_adjustment(prior: Tensor, tau, eps: float = 1e-12) -> Tensor:
    """Logit-adjustment offsets log(prior^tau + eps) (Menon et al., ICLR 2021; ACR's reference
    ``compute_adjustment_by_py``, eps 1e-12 as there). prior (K,) a class distribution, tau a float or a
    0-d tensor (0 gives ~0 offsets) -> (K,) float32. Add to logits for the logit-adjusted loss
    CE(l + adj, y); subtract from logits to remove the prior from a prediction, softmax(l - adj)."""
    return torch.log(prior.float() ** tau + eps)


def sym_kl(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """Symmetric KL divergence 0.5 KL(p || q) + 0.5 KL(q || p) over the last dim. p, q (..., K)
    distributions (broadcast) -> (...). Terms with p_k = 0 (q_k = 0) count 0, as torch's KLDivLoss; the
    other argument of each log is clamped at ``eps`` so a zero entry gives a large, finite value (the
    ACR reference computes it with KLDivLoss(reduction='sum') and no clamp: inf, then a NaN tau it skips)."""
    p, q = p.float(), q.float()
    kl_pq = (torch.xlogy(p, p) - p * q.clamp_min(eps).log()).sum(-1)
    kl_qp = (torch.xlogy(q, q) - q * p.clamp_min(eps).log()).sum(-1)
    return 0.5 * (kl_pq + kl_qp)


def anchor_weights(divergences: Tensor) -> Tensor:
    """ACR's anchor weights softmax(d) over the anchors' divergences d (A,) (symmetric KL of the
    estimated unlabelled class distribution to each anchor) -> (A,), summing to 1. Note the sign, as the
    reference (``KL_softmax = exp(count_KL[0]) / sum exp(count_KL)``): the FARTHEST anchor gets the most
    weight; the anchor the estimate equals (d = 0) the least."""
    return torch.softmax(divergences.float(), dim=-1)


def acr_tau(divergences: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """ACR's adaptive adjustment strength tau = tau_min + (tau_max - tau_min) * w_con, w = anchor_weights(d),
    d (3,) the divergences to the anchors in the order (consistent = labelled prior, uniform, reversed
    prior) -> 0-d tensor. Reference: taumin = 0, taumax = --tau1 = 2 (train.py). An estimate equal to the
    labelled prior gives a tau near tau_min (pseudo-labels keep the labelled prior), one equal to the
    reversed prior a tau near tau_max (the prior removed twice: a reversed one imposed), uniform between."""
    return tau_min + (tau_max - tau_min) * anchor_weights(divergences)[0]
