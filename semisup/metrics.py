"""Classification and pseudo-label metrics. All take integer class arrays; K = number of classes."""
from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def classification_metrics(cm: np.ndarray) -> dict:
    """Top-1, balanced accuracy (mean recall over classes present), per-class recall and precision,
    geometric mean of recalls. Classes absent from the evaluated set are left out of the means."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(1)
    tp = np.diag(cm)
    recall = _safe_div(tp, support)
    precision = _safe_div(tp, cm.sum(0))
    present = support > 0
    total = cm.sum()
    return {
        "top1": float(tp.sum() / total) if total else 0.0,
        "balanced_acc": float(recall[present].mean()) if present.any() else 0.0,
        "gmean_recall": float(np.exp(np.log(np.maximum(recall[present], 1e-12)).mean())) if present.any() else 0.0,
        "per_class_recall": recall.round(6).tolist(),
        "per_class_precision": precision.round(6).tolist(),
    }


class PseudoLabelTracker:
    """Accumulates, between evaluations, how the pseudo-labels of the unlabelled stream did against
    the stream's hidden true labels (which training never sees). Counts stay on the device as
    tensors so tracking costs no host sync per step."""

    def __init__(self, num_classes: int, device):
        self.K = num_classes
        self.device = device
        self.reset()

    def reset(self) -> None:
        z = lambda: torch.zeros(self.K, dtype=torch.float64, device=self.device)  # noqa: E731
        self.seen, self.passed_true, self.correct_true = z(), z(), z()  # indexed by true class
        self.passed_pred, self.correct_pred = z(), z()  # indexed by pseudo-label
        self.correct_all = z()  # pseudo-label right, passed or not, by true class

    @torch.no_grad()
    def update(self, pseudo: torch.Tensor, mask: torch.Tensor, true: torch.Tensor) -> None:
        """pseudo (U,) int64, mask (U,) in [0, 1], true (U,) int64 with -1 for unknown (STL-10 extra)."""
        known = true >= 0
        t, p = true[known], pseudo[known]
        m = (mask[known] > 0).double()
        c = (p == t).double() * m
        ones = torch.ones_like(m)
        self.seen.index_add_(0, t, ones)
        self.passed_true.index_add_(0, t, m)
        self.correct_true.index_add_(0, t, c)
        self.passed_pred.index_add_(0, p, m)
        self.correct_pred.index_add_(0, p, c)
        self.correct_all.index_add_(0, t, (p == t).double())

    def summary(self) -> dict:
        seen, pt, ct, pp, cp, ca = (a.cpu().numpy() for a in (self.seen, self.passed_true, self.correct_true,
                                                             self.passed_pred, self.correct_pred, self.correct_all))
        n, passed, correct = seen.sum(), pt.sum(), ct.sum()
        return {
            "pass_rate": float(passed / n) if n else 0.0,
            "pl_acc": float(correct / passed) if passed else 0.0,  # accuracy of the pseudo-labels that passed
            "pl_acc_all": float(ca.sum() / n) if n else 0.0,  # accuracy of every pseudo-label, passed or not
            "per_class_pass_rate": _safe_div(pt, seen).round(6).tolist(),  # by true class
            "per_class_pl_recall": _safe_div(ct, seen).round(6).tolist(),  # passed and correct / seen
            "per_class_pl_precision": _safe_div(cp, pp).round(6).tolist(),  # by pseudo-label
            "per_class_passed": pp.astype(int).tolist(),
        }


# ---- class-imbalance summaries ----


def _gmean(values) -> float:
    """Geometric mean, each value clamped at 1e-12 (as ``gmean_recall`` in classification_metrics)."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.exp(np.log(np.maximum(v, 1e-12)).mean())) if v.size else 0.0


def group_sizes(num_classes: int) -> tuple[int, int, int]:
    """(head, medium, tail) sizes: head = tail = floor(0.3 K + 0.5) (0.3 K rounded half up), medium the
    rest. K=10 -> 3/4/3, K=100 -> 30/40/30, K=5 -> 2/1/2, K=3 -> 1/1/1, K=2 -> 1/0/1, K=1 -> 0/1/0."""
    n = int(np.floor(0.3 * num_classes + 0.5))
    if 2 * n > num_classes:
        n = num_classes // 2
    return n, num_classes - 2 * n, n


def group_metrics(per_class_recall, labelled_counts) -> dict:
    """Recall by head / medium / tail group, the rarest class's recall and the geometric mean of recalls.

    per_class_recall (K,) (e.g. ``classification_metrics(cm)["per_class_recall"]``), labelled_counts (K,).
    Classes are ordered by labelled count, descending, ties broken by class index (lower first); the
    head is the first 30 %, the tail the last 30 %, the medium the middle 40 % (sizes: ``group_sizes``).
    A group that is empty (K < 3) has mean recall nan. "minority_recall" is the recall of the class with
    the fewest labels; on a tie, the one with the highest class index (the last in the order above, so
    it always belongs to the tail). "gmean_recall" is over all K classes given (pass recalls of the
    classes present in the evaluation set only to match classification_metrics' gmean_recall)."""
    recall = np.asarray(per_class_recall, dtype=np.float64)
    counts = np.asarray(labelled_counts)
    if recall.shape != counts.shape or recall.ndim != 1:
        raise ValueError(f"per_class_recall {recall.shape} and labelled_counts {counts.shape} must both be (K,)")
    order = np.lexsort((np.arange(len(counts)), -counts))  # count descending, then index ascending
    h, m, _ = group_sizes(len(counts))
    groups = {"head": order[:h], "medium": order[h:h + m], "tail": order[h + m:]}
    out = {f"{g}_recall": float(recall[idx].mean()) if len(idx) else float("nan") for g, idx in groups.items()}
    out.update({f"{g}_classes": idx.tolist() for g, idx in groups.items()})
    out["minority_class"] = int(order[-1])
    out["minority_recall"] = float(recall[order[-1]])
    out["gmean_recall"] = _gmean(recall)
    return out


def apr(pass_rates, center_index: int, half_window: int) -> tuple[float, float]:
    """Average pass rate: mean and (population, ddof=0) std of the pass rates of evaluations
    center_index - half_window .. center_index + half_window inclusive, clipped to the sequence.
    pass_rates (E,) one per evaluation (``PseudoLabelTracker.summary()["pass_rate"]``); center_index
    is the evaluation taken as convergence (chosen by the caller, e.g. the best or the last)."""
    r = np.asarray(pass_rates, dtype=np.float64)
    if not 0 <= center_index < len(r) or half_window < 0:
        raise ValueError(f"center_index={center_index} / half_window={half_window} outside {len(r)} evaluations")
    win = r[max(0, center_index - half_window):center_index + half_window + 1]
    return float(win.mean()), float(win.std())


def ler(acc: float, apr_mean: float) -> float:
    """acc / APR: accuracy per unit of unlabelled data admitted by the confidence mask (our reading of
    the ratio; higher = the same accuracy reached with fewer pseudo-labels passing). nan if APR is 0."""
    return float(acc / apr_mean) if apr_mean > 0 else float("nan")
