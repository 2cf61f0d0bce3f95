"""The report's figures: each function takes run data and returns a matplotlib Figure. Figures are
made with the object API (no pyplot): no display, no global backend switched, PNGs drawn by Agg.
Class axes run head -> tail (most labelled images first)."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .runs import RunData, series

STYLE = {"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
         "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8, "legend.frameon": False}
NAMED_CLASSES_MAX = 30  # above this many classes, class axes show ranks instead of names


def class_colors(k: int) -> list:
    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [colormaps["tab20"](i) for i in range(k)]
    return [colormaps["turbo"](i / (k - 1)) for i in range(k)]


def _figure(w: float, h: float, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _class_ticks(ax, labels: list[str], axis: str = "x") -> None:
    k = len(labels)
    if k > NAMED_CLASSES_MAX:
        return  # numeric positions = head -> tail rank
    if axis == "y":
        ax.set_yticks(range(k), labels)
        return
    long = max(len(line) for s in labels for line in s.split("\n")) > 4
    ax.set_xticks(range(k), labels, **({"rotation": 35, "ha": "right", "rotation_mode": "anchor"} if long else {}))


def curves(run: RunData) -> Figure:
    """Test accuracy, training losses and pseudo-label pass rate against steps."""
    with rc_context(STYLE):
        fig, (a1, a2, a3) = _figure(13, 3.6, 3)
        recs, part = run.records, run.part
        for keys, label, style in ((("test", "top1"), "test top-1", "-"),
                                   (("test", "balanced_acc"), "test balanced acc", "--"),
                                   (("val", "top1"), "val top-1", ":"),
                                   *([(("val", "balanced_acc"), "val balanced acc", "--")] if part == "val" else [])):
            x, y = series(recs, *keys)
            if len(x):
                a1.plot(x, 100 * y, style, marker="o", ms=3, label=label)
        b = run.best
        a1.axvline(b["step"], color="0.6", lw=0.8, ls=":", label=f"best.pt (step {b['step']})")
        a1.set(title="Accuracy", xlabel="step", ylabel="%")
        a1.legend()
        loss_keys = sorted({k for r in recs for k, v in r.get("train", {}).items()
                            if k.startswith("loss") and isinstance(v, (int, float))})
        for k in loss_keys:
            x, y = series(recs, "train", k)
            a2.plot(x, y, marker="o", ms=3, label=f"train {k}")
        x, y = series(recs, part, "loss")
        a2.plot(x, y, "k--", marker="o", ms=3, label=f"{part} loss (EMA model)")
        values = np.concatenate([series(recs, "train", k)[1] for k in loss_keys] + [y])
        if len(values) and values.min() > 0 and values.max() / values.min() > 30:  # spans > 1.5 decades
            a2.set_yscale("log")
        a2.set(title="Losses (train: mean since the previous evaluation)", xlabel="step")
        a2.legend()
        x, y = series(recs, "train", "pass_rate")
        xa, ya = series(recs, part, "alignment")  # train.probe_images: e.g. SimCLR pretraining
        if len(xa) and not (len(x) and y.max() > 0):  # no pseudo-label ever passed: show the embedding
            xu, yu = series(recs, part, "uniformity")
            a3.plot(xa, ya, marker="o", ms=3, label="alignment (lower: the two views closer)")
            a3.plot(xu, yu, marker="o", ms=3, label="uniformity (lower: more evenly spread)")
            a3.set(title="Embedding of fixed test views (Wang & Isola 2020)", xlabel="step")
            a3.legend()
        elif len(x):
            a3.plot(x, 100 * y, marker="o", ms=3, label="pass rate (mask > 0)")
            for key, label in (("pl_acc", "precision of passed labels"), ("pl_acc_all", "accuracy of all labels")):
                xs, ys = series(recs, "train", key)
                a3.plot(xs, 100 * ys, marker="o", ms=3, label=label)
            a3.set(title="Pseudo-labels on the unlabelled stream", xlabel="step", ylabel="%", ylim=(0, 102))
            a3.legend()
        else:
            a3.set_title("Pseudo-labels")
            _empty(a3, f"{run.config.get('algorithm', {}).get('name', 'this algorithm')} makes no pseudo-labels")
    return fig


def per_class_recall(run: RunData, classes: list[str]) -> Figure:
    """Final per-class test recall (and precision) as bars, head -> tail."""
    order, t = run.order(), run.final[run.part]
    k = len(order)
    with rc_context(STYLE):
        fig, (ax,) = _figure(max(7.0, min(14.0, 0.5 * k + 3)), 5.0)
        x = np.arange(k)
        rec = 100 * np.asarray(t["per_class_recall"])[order]
        prec = 100 * np.asarray(t["per_class_precision"])[order]
        w = 0.4 if k <= NAMED_CLASSES_MAX else 0.8
        ax.bar(x - (w / 2 if k <= NAMED_CLASSES_MAX else 0), rec, w, label="recall", color="tab:blue")
        if k <= NAMED_CLASSES_MAX:
            ax.bar(x + w / 2, prec, w, label="precision", color="tab:orange", alpha=0.7)
        ax.axhline(100 * t["balanced_acc"], color="k", lw=0.8, ls="--",
                   label=f"balanced acc {100 * t['balanced_acc']:.1f} %")
        counts = run.labelled_counts
        show = counts is not None and len(set(counts)) > 1  # a balanced split: every count the same
        _class_ticks(ax, [f"{classes[c]} ({counts[c]})" if show else classes[c] for c in order])
        ax.set(ylim=(0, 105), ylabel="%", xlabel="class, head -> tail" + (" (labelled images)" if show else "")
               + (" by rank" if k > NAMED_CLASSES_MAX else ""),
               title=f"Per-class {run.part_name} recall{' and precision' if k <= NAMED_CLASSES_MAX else ''} at step "
                     f"{run.final['step']} (EMA model)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def confusion(run: RunData, classes: list[str]) -> Figure:
    """Final test confusion matrix, rows normalised (a row's diagonal cell = that class's recall)."""
    order = run.order()
    cm = np.asarray(run.final[run.part]["confusion"], dtype=np.float64)[np.ix_(order, order)]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(order)
    with rc_context({**STYLE, "axes.grid": False}):
        side = max(4.5, min(10.0, 0.4 * k + 1.6))
        fig, (ax,) = _figure(side + 1.2, side)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8 if k <= 10 else 6.5,
                                color="white" if norm[i, j] > 0.5 else "0.15")
        names = [classes[c] for c in order]
        _class_ticks(ax, names, "x")
        _class_ticks(ax, names, "y")
        ax.set(xlabel="predicted class", ylabel="true class",
               title=f"{run.part_name.capitalize()} confusion at step {run.final['step']} "
                     "(counts; colour = row fraction)")
        fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig


def pseudo_per_class(run: RunData, classes: list[str]) -> Figure | None:
    """Per-class pseudo-label pass rate (by true class) and precision (by pseudo-label) over time."""
    x, rate = series(run.records, "train", "per_class_pass_rate")
    if not len(x):
        return None
    _, prec = series(run.records, "train", "per_class_pl_precision")
    order = run.order()
    colors = class_colors(len(order))
    with rc_context(STYLE):
        fig, (a1, a2) = _figure(13, 3.8, 2)
        for rank, c in enumerate(order):
            a1.plot(x, 100 * rate[:, c], color=colors[rank], marker="o", ms=2, label=classes[c])
            a2.plot(x, 100 * prec[:, c], color=colors[rank], marker="o", ms=2, label=classes[c])
        a1.set(title="Pass rate per true class", xlabel="step", ylabel="%", ylim=(0, 102))
        a2.set(title="Precision per pseudo-label (passed labels that are right)", xlabel="step", ylabel="%",
               ylim=(0, 102))
        if len(order) <= 20:
            a2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title="head -> tail")
        else:
            sm = ScalarMappable(cmap="turbo", norm=Normalize(0, len(order) - 1))
            fig.colorbar(sm, ax=a2, label="class rank, head -> tail")
    return fig


def tsne(emb: np.ndarray, labels: np.ndarray, classes: list[str], title: str) -> Figure:
    """2-D t-SNE points coloured by true class."""
    k = len(classes)
    colors = class_colors(k)
    with rc_context({**STYLE, "axes.grid": False}):
        fig, (ax,) = _figure(8.5, 6.5)
        size = float(np.clip(12000 / max(len(emb), 1), 2, 14))
        for c in range(k):
            m = labels == c
            ax.scatter(emb[m, 0], emb[m, 1], s=size, color=colors[c], label=classes[c], linewidths=0, alpha=0.85)
        ax.set_axis_off()
        ax.set_title(title)
        if k <= 20:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=2.5)
    return fig


def compare(runs: list[RunData]) -> Figure:
    """Test top-1 and balanced accuracy of several runs, overlaid, against steps; then top-1 against training
    time (metrics.jsonl's train_seconds: the wall time before that evaluation, earlier evaluations included),
    where runs whose steps cost different times (FixMatch and supervised) compare at equal budget."""
    with rc_context(STYLE):
        fig, (a1, a2, a3) = _figure(15, 4.0, 3)
        for i, run in enumerate(runs):
            color = colormaps["tab10"](i % 10)
            for ax, key in ((a1, "top1"), (a2, "balanced_acc")):
                x, y = series(run.records, run.part, key)
                ax.plot(x, 100 * y, color=color, marker="o", ms=3, label=run.name)
            minutes, top1 = time_series(run.records, run.part)
            a3.plot(minutes, 100 * top1, color=color, marker="o", ms=3, label=run.name)
        a1.set(title="Test top-1", xlabel="step", ylabel="%")
        a2.set(title="Test balanced accuracy", xlabel="step", ylabel="%")
        a3.set(title="Test top-1 against training time", xlabel="minutes", ylabel="%")
        a3.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def time_series(records: list[dict], part: str) -> tuple[np.ndarray, np.ndarray]:
    """(minutes of training, top-1) of the records that have both."""
    pairs = [(r["train_seconds"] / 60, r[part]["top1"]) for r in records
             if isinstance(r.get("train_seconds"), (int, float)) and "top1" in r.get(part, {})]
    return np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs], dtype=np.float64)


def save(fig: Figure, path, dpi: int = 100) -> None:
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
