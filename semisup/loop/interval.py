"""``IntervalStats``: the training statistics of the steps since the last regular evaluation.

Each record of metrics.jsonl averages its loss terms over these steps and scores the pseudo-labels
they made against the hidden labels (``PseudoLabelTracker``: pass rate, accuracy of what passed).
It is checkpointed, so the next record of a resumed run averages over the same steps as the
uninterrupted run's.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import dist
from ..algorithms.contract import StepOutput
from ..metrics import PseudoLabelTracker

TRACKER_FIELDS = ("seen", "passed_true", "correct_true", "passed_pred", "correct_pred", "correct_all")


class IntervalStats:
    def __init__(self, num_classes: int, device, main: bool):
        self.num_classes, self.device, self.main = num_classes, device, main
        self.tracker = PseudoLabelTracker(num_classes, device)  # the algorithm's pseudo-labels, masked
        self.others: dict[str, PseudoLabelTracker] = {}  # StepOutput.other_labels (e.g. DASO's two), unmasked
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0  # optimisation steps (skipped ones not counted)
        self.step_times: list[float] = []  # wall time of each step (CPU ops are synchronous: true step times)
        self.data_times: list[float] = []  # of which sampling + augmentation (+ CTAugment's probe)

    def _other(self, name: str) -> PseudoLabelTracker:
        if name not in self.others:
            self.others[name] = PseudoLabelTracker(self.num_classes, self.device)
        return self.others[name]

    def add(self, out: StepOutput, hidden: torch.Tensor | None) -> None:
        """One optimisation step's output; ``hidden`` the true labels of its unlabelled images (None without)."""
        if out.pseudo_label is not None and hidden is not None:
            self.tracker.update(out.pseudo_label, out.mask, hidden)
        for name, labels in out.other_labels.items():
            if hidden is not None:
                self._other(name).update(labels, torch.ones_like(labels, dtype=torch.float32), hidden)
        with torch.no_grad():
            for k, v in (("loss", out.loss), *out.terms.items()):
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1

    def all_reduce(self) -> None:
        """DDP, before rank 0 evaluates: the loss terms averaged over ranks, the pseudo-label counts summed."""
        keys = sorted(self.sums)
        dist.all_reduce_([self.sums[k] for k in keys])
        for t in (self.tracker, *self.others.values()):
            dist.all_reduce_([getattr(t, k) for k in TRACKER_FIELDS], op="sum")

    def record(self, pseudo_labels: bool) -> dict:
        """The record's "train" part: mean loss terms, and with unlabelled data the pseudo-label scores."""
        out = {k: float(v) / self.n for k, v in self.sums.items()}
        if pseudo_labels:
            out.update(self.tracker.summary())
            out.update({f"pseudo_label_{n}": t.summary() for n, t in self.others.items()})
        return out

    def timing(self) -> dict:
        return {"step_seconds_median": float(np.median(self.step_times)) if self.step_times else 0.0,
                "data_seconds_median": float(np.median(self.data_times)) if self.data_times else 0.0}

    def reset(self) -> None:
        self.sums, self.n, self.step_times, self.data_times = {}, 0, [], []
        self.tracker.reset()
        for t in self.others.values():
            t.reset()

    def state_dict(self) -> dict:
        return {"n_since": self.n, "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
                "tracker": {k: getattr(self.tracker, k).cpu() for k in TRACKER_FIELDS},
                "trackers": {n: {k: getattr(t, k).cpu() for k in TRACKER_FIELDS} for n, t in self.others.items()}}

    def load_state_dict(self, sd: dict) -> None:
        """Counts are restored on rank 0 only: they are summed over ranks at each evaluation."""
        self.n, self.sums = sd["n_since"], {k: v.to(self.device) for k, v in sd["sums"].items()}
        for k in TRACKER_FIELDS if self.main else ():
            getattr(self.tracker, k).copy_(sd["tracker"][k])
        for n, saved in sd.get("trackers", {}).items():
            t = self._other(n)
            for k in TRACKER_FIELDS if self.main else ():
                getattr(t, k).copy_(saved[k])
