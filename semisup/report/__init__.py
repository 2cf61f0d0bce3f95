"""`semisup report`: a self-contained report.html (figures embedded; the PNGs also written beside it)
from what run directories already hold. Run directories are only read; everything goes to ``out``.

    build_report(["runs/a"])                     -> runs/a/report/report.html
    build_report(["runs/a", "runs/b"], "cmp")    -> cmp/report.html (comparison + one section per run)
"""
from __future__ import annotations

import datetime
import os
import re
from pathlib import Path

import yaml

from .. import __version__, checkpoint
from ..errors import UserError
from . import html, plots
from .runs import RunData, read_run, run_names
from .tsne import Embedding, tsne_of_run

__all__ = ["build_report", "read_run", "FIGURES"]
# figure keys (also the PNG names); "pseudo_labels" only for algorithms that make pseudo-labels,
# "tsne" only when a checkpoint and the dataset can be loaded; "compare" only for several runs
FIGURES = ("curves", "recall", "confusion", "pseudo_labels", "tsne")


def build_report(run_dirs, out: str | Path | None = None, tsne_points: int = 2000, seed: int = 0) -> Path:
    """Write report.html and its PNGs to ``out`` (default RUN_DIR/report for one run, ./report for
    several); returns the path of report.html. ``tsne_points=0`` leaves the t-SNE out."""
    paths = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(p) for p in run_dirs]
    if not paths:
        raise UserError("give at least one run directory")
    if tsne_points < 0:
        raise UserError(f"tsne_points={tsne_points} must be >= 0 (0 leaves the t-SNE out)")
    names = run_names(paths) if len(paths) > 1 else [paths[0].resolve().name]
    runs = [read_run(p, n) for p, n in zip(paths, names)]
    out = Path(out) if out is not None else (paths[0] / "report" if len(paths) == 1 else Path("report"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"report output {str(out)!r} exists and is not a directory; choose another -o") from None
    except OSError as e:
        raise UserError(f"cannot create the report directory {str(out)!r}: {e.strerror}") from None
    body = []
    if len(runs) > 1:
        body += _comparison(runs, out)
    for i, run in enumerate(runs):
        sub = "" if len(runs) == 1 else f"{i + 1}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', run.name)}"
        body += _run_section(run, out, sub, i, tsne_points, seed)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"semisup report: {runs[0].name}" if len(runs) == 1 else f"semisup report: {len(runs)} runs"
    text = html.page(title, f"generated {when} by semisup {__version__} from "
                            f"{', '.join(str(p) for p in paths)}", body)
    target = out / "report.html"
    tmp = out / f".report.html.tmp{os.getpid()}"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)  # a browser reloading the page never sees half a file
    return target


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}" if seconds >= 60 else f"{seconds / 60:.2f}"


def _row(run: RunData) -> dict:
    alg = run.config.get("algorithm", {}).get("name", "?")
    counts = run.labelled_counts
    f, b = run.final, run.best
    return {"run": run.name, "algorithm": alg, "dataset": run.config.get("data", {}).get("name", "?"),
            "model": run.config.get("model", {}).get("name", "?"), "labels": sum(counts) if counts else "?",
            "steps": f"{f['step']} / {run.steps_planned}" if run.steps_planned else str(f["step"]),
            "final top-1": _pct(f[run.part]["top1"]), "best top-1": f"{_pct(b[run.part]['top1'])} @ {b['step']}",
            "balanced acc": _pct(f[run.part]["balanced_acc"]), "evaluated on": run.part_name,
            "train min": _minutes(f.get("train_seconds", 0)), "status": run.status}


def _comparison(runs: list[RunData], out: Path) -> list[str]:
    rows = [_row(r) for r in runs]
    header = ["run", "algorithm", "dataset", "labels", "steps", "evaluated on", "final top-1", "best top-1",
              "balanced acc", "train min", "status"]
    parts = ['<section id="comparison"><h2>Comparison</h2>',
             html.table(header, [[r[h] for h in header] for r in rows], numeric={3, 6, 7, 8, 9}),
             html.note("best top-1: the evaluation best.pt was saved at (selected on the validation hold-out "
                       "when the run has one, else on test: then it is an optimistic figure); evaluated on: "
                       "validation for data without a test set, whose figures are all validation figures")]
    parts.append(_figure(plots.compare(runs), out, "", "compare",
                         "Test accuracy (validation accuracy for runs without a test set) of every run against "
                         "training steps, then top-1 against minutes of training (EMA model)"))
    return parts + ["</section>"]


def _figure(fig, out: Path, sub: str, key: str, caption: str) -> str:
    rel = f"{sub}/{key}.png" if sub else f"{key}.png"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    plots.save(fig, out / rel)
    return html.figure(key, (out / rel).read_bytes(), rel, caption)


def _class_names(run: RunData, emb: Embedding | None) -> list[str]:
    if emb is not None:
        return emb.classes
    for name in ("best.pt", "last.pt"):
        try:
            classes = checkpoint.load(run.path / name)["meta"]["classes"]
            if len(classes) == run.num_classes:
                return [str(c) for c in classes]
        except (UserError, KeyError, TypeError):
            continue
    return [str(k) for k in range(run.num_classes)]


def _run_section(run: RunData, out: Path, sub: str, i: int, tsne_points: int, seed: int) -> list[str]:
    emb, tsne_error = None, None
    if tsne_points:
        try:
            emb = tsne_of_run(run.path, tsne_points, seed)
        except UserError as e:
            tsne_error = str(e)
    classes = _class_names(run, emb)
    r, f = _row(run), run.final
    parts = [f'<section id="run-{i + 1}"><h2>{html.escape(run.name)}</h2>',
             '<p class="sub">' + html.escape(f'{run.path} · {r["algorithm"]} on {r["dataset"]} · model '
                                             f'{r["model"]} · {r["labels"]} labels · {run.status}') + "</p>",
             html.facts([(f"final {run.part_name} top-1", r["final top-1"]), ("best top-1 @ step", r["best top-1"]),
                         ("final balanced accuracy", r["balanced acc"]),
                         ("final G-mean of recalls", _pct(f[run.part].get("gmean_recall"))),
                         ("steps done / planned", r["steps"]), ("training minutes", r["train min"]),
                         ("images / s", f"{f.get('images_per_s', 0):,.0f}")])]
    parts += [html.note(n) for n in run.notes]
    parts.append(_figure(plots.curves(run), out, sub, "curves",
                         f"Learning curves against training steps; {run.part_name} figures from the EMA model"))
    order_text = "head -> tail (most labelled images first, ties in class order)" if run.labelled_counts \
        else "in class order"
    parts.append('<div class="pair">' + _figure(
        plots.per_class_recall(run, classes), out, sub, "recall",
        f"Per-class {run.part_name} recall and precision at the last evaluation, classes {order_text}") + _figure(
        plots.confusion(run, classes), out, sub, "confusion",
        "Test confusion matrix at the last evaluation (rows: true class, head -> tail)") + "</div>")
    fig = plots.pseudo_per_class(run, classes)
    if fig is not None:
        parts.append(_figure(fig, out, sub, "pseudo_labels", "Pseudo-labels of the unlabelled stream per class, "
                             "measured against the labels training never sees"))
    if emb is not None:
        title = f"t-SNE of {len(emb.labels)} {run.part_name} images' features ({emb.checkpoint}, step {emb.step})"
        parts.append(_figure(plots.tsne(emb.points, emb.labels, emb.classes, title), out, sub, "tsne",
                             f"t-SNE (PCA to 50 dims first) of penultimate-layer features of {len(emb.labels)} "
                             f"{run.part_name} images (stratified, seed {seed}) from {emb.checkpoint}'s "
                             f"{emb.weights} weights; colour = true class"))
    elif tsne_error:
        parts.append(html.note(f"t-SNE left out: {tsne_error}"))
    parts.append('<div class="cols"><div><h3>Resolved config (config.yaml)</h3><pre>'
                 + html.escape(yaml.safe_dump(run.config, sort_keys=False)) + "</pre></div>")
    parts.append("<div><h3>Split (split.json)</h3>" + _split_table(run, classes) + "</div></div></section>")
    return parts


def _split_table(run: RunData, classes: list[str]) -> str:
    counts = (run.split or {}).get("counts")
    if not counts:
        return html.note("split.json missing or unreadable")
    parts = [p for p in ("labelled", "unlabelled", "val") if len(counts.get(p, [])) == run.num_classes]
    rows = [[classes[c]] + [counts[p][c] for p in parts] for c in run.order()]
    rows.append(["total"] + [sum(counts[p]) for p in parts])
    return (f"<p>seed {run.split.get('seed')}; classes head -> tail</p>"
            + html.table(["class", *parts], rows, numeric=set(range(1, len(parts) + 1))))
