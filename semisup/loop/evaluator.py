"""``Evaluator``: what each metrics record measures on held-out images, with the EMA model.

Test set (when the dataset has one) and validation hold-out (when the split keeps one): top-1,
balanced accuracy, per-class recall / precision, loss, confusion matrix, and the head / medium / tail
recall of long-tailed protocols; with ``train.probe_images`` also the alignment and uniformity of the
features. ``score`` picks what best.pt is chosen on (validation when there is one, never tuned on
the test set when there is not).
"""
from __future__ import annotations

import sys

import torch

from .. import losses
from ..data.transforms import to_float
from ..metrics import classification_metrics, confusion_matrix, group_metrics
from ..runtime import Runtime
from .setup import Setup

GROUP_KEYS = ("head_recall", "medium_recall", "tail_recall", "minority_class", "minority_recall")


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, rt: Runtime, mean, std, batch_size: int,
             predict=None) -> dict:
    """Top-1, balanced accuracy, per-class recall/precision, loss and confusion matrix. x uint8 (N,C,H,W).
    ``predict(model, x) -> logits`` replaces ``model(x).logits`` (an algorithm's own inference, e.g. ABC's head)."""
    was_training = model.training
    model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, len(x), batch_size):
        xb = rt.to_input(to_float(x[i:i + batch_size].to(rt.device), mean, std))
        yb = y[i:i + batch_size].to(rt.device)
        with rt.autocast():
            logits = (model(xb).logits if predict is None else predict(model, xb)).float()  # (b, K)
        loss_sum += torch.nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
    model.train(was_training)
    num_classes = model.head.out_features
    cm = confusion_matrix(y.numpy(), torch.cat(preds).numpy(), num_classes)
    out = classification_metrics(cm)
    out["loss"] = loss_sum / max(1, len(x))
    out["confusion"] = cm.tolist()
    return out


@torch.no_grad()
def embedding_probe(model, views: list, rt: Runtime, batch_size: int) -> dict:
    """Alignment and uniformity (Wang & Isola 2020, losses.alignment / uniformity) of the model's
    L2-normalised features on two fixed views (float (N, C, H, W) each) of the same images: how close
    the two views of an image land, and how evenly the images spread over the sphere. What SimCLR
    optimises, measurable whatever the classifier head knows (train.probe_images)."""
    was_training = model.training
    model.eval()
    feats = []
    for v in views:
        parts = []
        for i in range(0, len(v), batch_size):
            with rt.autocast():
                parts.append(model(rt.to_input(v[i:i + batch_size])).features.float())  # (b, D)
        feats.append(torch.cat(parts))  # (N, D)
    model.train(was_training)
    return {"alignment": float(losses.alignment(*feats)), "uniformity": float(losses.uniformity(feats[0]))}


class Evaluator:
    def __init__(self, s: Setup, simclr_view):
        self.s, ds, split = s, s.ds, s.split
        train_x = torch.from_numpy(ds.train_x)
        self.test_x, self.test_y = torch.from_numpy(ds.test_x), torch.from_numpy(ds.test_y).long()
        self.val_x = train_x[torch.from_numpy(split.val)]
        self.val_y = torch.from_numpy(ds.train_y[split.val]).long()
        self.has_test = len(self.test_x) > 0  # without a test set every figure is a validation figure, and says so
        if not self.has_test and s.rt.dist.main:
            print(f"semisup: {ds.name} has no test set: every accuracy of this run is measured on the validation "
                  f"hold-out ({len(self.val_x)} labelled images not trained on), and best.pt is chosen on it too",
                  file=sys.stderr)
        self.probe = None  # train.probe_images: two SimCLR views of the first test images, fixed for the whole run
        n = s.cfg.train.probe_images
        if n:
            g_probe = torch.Generator().manual_seed(s.cfg.run.seed)
            x_probe = (self.test_x if self.has_test else self.val_x)[:n].to(s.rt.device)
            self.probe = [to_float(simclr_view(x_probe, g_probe), ds.mean, ds.std) for _ in range(2)]

    @property
    def selected_on(self) -> str:
        """The part best.pt is chosen on: "val" when the run holds out validation images, else "test"."""
        return "val" if len(self.val_x) else "test"

    def measure(self) -> dict:
        """{"test": {...}, "val": {...}}, each part present when its images are."""
        s, bs = self.s, self.s.cfg.train.eval_batch_size
        model, mean, std = s.eval_model, s.ds.mean, s.ds.std
        out = {}
        if self.has_test:
            out["test"] = evaluate(model, self.test_x, self.test_y, s.rt, mean, std, bs, s.predict)
        if len(self.val_x):
            out["val"] = evaluate(model, self.val_x, self.val_y, s.rt, mean, std, bs, s.predict)
        if self.probe is not None:
            out["test" if "test" in out else "val"].update(embedding_probe(model, self.probe, s.rt, bs))
        for part in out.values():  # head / medium / tail by labelled count (long-tailed protocols)
            g = group_metrics(part["per_class_recall"], s.labelled_counts)
            part.update({k: (None if v != v else v) for k, v in g.items() if k in GROUP_KEYS})  # nan -> null
        return out

    def score(self, measured: dict) -> float:
        """Higher is better: top-1, or minus the loss (train.select_on), of the part best.pt is chosen on."""
        scored = measured[self.selected_on]
        return scored["top1"] if self.s.cfg.train.select_on == "top1" else -scored["loss"]
