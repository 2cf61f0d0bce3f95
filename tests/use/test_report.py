"""`semisup report` on real tiny runs: every figure a valid image, a self-contained report.html that a
real headless browser (Debian's chromium, installed by .ci/run) loads and renders, the run
directories left untouched, running / resumed runs, user errors."""
import base64
import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from helpers import tiny_overrides
from PIL import Image

from semisup import config as C
from semisup.cli import main
from semisup.errors import UserError
from semisup.report import FIGURES, build_report
from semisup.report.runs import read_metrics, read_run
from semisup.report.tsne import stratified_sample
from semisup.train import train

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="apt-get install chromium (.ci/run does)")
TSNE = 150  # points: keeps each t-SNE well under a second


def _tree(d):
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three short real runs on digits: FixMatch, the supervised baseline (no pseudo-labels) and
    Pseudo-Label on a long-tailed split with a validation hold-out (head -> tail order, val curve)."""
    root = tmp_path_factory.mktemp("runs")
    specs = {"fixmatch": {}, "supervised": {"algorithm.name": "supervised"},
             "pseudo_label_lt": {"algorithm.name": "pseudo_label", "data.split": "long_tail", "data.n1": 12,
                                 "data.gamma_l": 6, "data.m1": 60, "data.val_per_class": 2}}
    for name, extra in specs.items():
        train(C.resolve(overrides=tiny_overrides(root / name, steps=12, **extra)))
    return {name: root / name for name in specs}


def _check_png(path, min_size=(300, 200)):
    """A PNG that PIL decodes fully, of a sensible size, and not blank."""
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1], (path, im.size)
        assert im.width <= 4000 and im.height <= 4000, (path, im.size)
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 5, f"{path} looks blank"


def _embedded(html):
    """{figure key: decoded PNG bytes} of the report's <img data-figure=...> tags."""
    return {k: base64.b64decode(v) for k, v in
            re.findall(r'<img data-figure="([\w-]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)}


def test_one_run_report_has_every_figure_embedded_and_leaves_the_run_alone(runs, tmp_path):
    run = runs["fixmatch"]
    before = _tree(run)
    out = build_report([run], tmp_path / "rep", tsne_points=TSNE)
    assert out == tmp_path / "rep" / "report.html"
    assert _tree(run) == before, "the report must only read the run directory"
    html = out.read_text()
    emb = _embedded(html)
    assert sorted(emb) == sorted(FIGURES)
    for key in FIGURES:
        _check_png(out.parent / f"{key}.png")
        assert emb[key] == (out.parent / f"{key}.png").read_bytes(), f"{key}: embedded != file beside"
    # self-contained: no scripts, nothing fetched from the network
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    assert "fixmatch" in html and "Resolved config" in html and "labelled" in html
    # the default output directory is RUN_DIR/report (checked on a copy)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert build_report(copy, tsne_points=0) == copy / "report" / "report.html"
    assert "tsne" not in _embedded((copy / "report" / "report.html").read_text())


def test_three_runs_together_compare_and_keep_each_runs_figures(runs, tmp_path):
    out = build_report(list(runs.values()), tmp_path / "cmp", tsne_points=TSNE)
    html = out.read_text()
    _check_png(out.parent / "compare.png")
    assert 'data-figure="compare"' in html
    table = html[html.index('id="comparison"'):html.index("</table>")]
    assert all(name in table for name in runs) and table.count("<tr>") == 4  # header + three runs
    for i, name in enumerate(runs, 1):
        expected = [k for k in FIGURES if not (name == "supervised" and k == "pseudo_labels")]
        for key in expected:
            _check_png(out.parent / f"{i}_{name}" / f"{key}.png")
        section = html[html.index(f'id="run-{i}"'):]
        section = section[:section.index("</section>")]
        assert sorted(_embedded(section)) == sorted(expected), name
    assert html.count("<img data-figure=") == 1 + 5 + 4 + 5


def test_compare_plots_top1_against_minutes_of_training(runs):
    """The third panel: each run's top-1 against train_seconds / 60, the records without either left out."""
    from semisup.report import plots

    run = read_run(runs["supervised"])
    minutes, top1 = plots.time_series(run.records, run.part)
    assert len(minutes) == len(run.records) and np.all(np.diff(minutes) > 0)
    assert np.allclose(minutes, [r["train_seconds"] / 60 for r in run.records])
    assert np.allclose(top1, [r[run.part]["top1"] for r in run.records])
    partial = [{"step": 1, "test": {"top1": 0.5}}, {"step": 2, "train_seconds": 90.0, "test": {"top1": 0.7}},
               {"step": 3, "train_seconds": 120.0, "val": {"top1": 0.1}}]
    assert [list(a) for a in plots.time_series(partial, "test")] == [[1.5], [0.7]]
    fig = plots.compare([run, read_run(runs["fixmatch"])])
    ax = fig.axes[2]
    assert ax.get_xlabel() == "minutes" and len(ax.lines) == 2
    assert np.allclose(ax.lines[0].get_xdata(), minutes) and np.allclose(ax.lines[0].get_ydata(), 100 * top1)


def test_head_to_tail_order_follows_the_labelled_counts(runs):
    run = read_run(runs["pseudo_label_lt"])
    counts = run.labelled_counts
    assert len(set(counts)) > 1, "a long-tailed split"
    order = run.order()
    assert [counts[k] for k in order] == sorted(counts, reverse=True)
    assert all(order[i] < order[i + 1] for i in range(len(order) - 1) if counts[order[i]] == counts[order[i + 1]])
    assert "val" in run.final and run.best["step"] in (4, 8, 12)


def test_running_and_resumed_runs(runs, tmp_path):
    """A run still writing: no summary.json, no best.pt yet (t-SNE falls back to last.pt), a half-written
    last line; a resumed run that logged step 8 twice (the later record wins)."""
    live = tmp_path / "live"
    shutil.copytree(runs["fixmatch"], live)
    (live / "summary.json").unlink()
    (live / "best.pt").unlink()
    lines = (live / "metrics.jsonl").read_text().splitlines()
    second = json.loads(lines[1])
    second["test"]["top1"] = 0.123456
    (live / "metrics.jsonl").write_text("\n".join([lines[0], lines[1], json.dumps(second), lines[2]])
                                        + '\n{"step": 16, "lr": 0.02, "train": {"lo')
    records, skipped = read_metrics(live / "metrics.jsonl")
    assert skipped and [r["step"] for r in records] == [4, 8, 12] and records[1]["test"]["top1"] == 0.123456
    html = build_report(live, tmp_path / "rep", tsne_points=TSNE).read_text()
    assert "running (or killed)" in html and "incomplete" in html and "last.pt" in html
    assert sorted(_embedded(html)) == sorted(FIGURES)


def test_user_errors(runs, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(runs["supervised"], bad)
    (bad / "metrics.jsonl").write_text('{"step": 4}\nnot json\n' + (runs["supervised"] / "metrics.jsonl").read_text())
    with pytest.raises(UserError, match="line 1"):
        read_run(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text((runs["supervised"] / "config.yaml").read_text())
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for argv, message in ((["report", str(tmp_path / "nope")], "not found"),
                          (["report", str(tmp_path)], "no config.yaml"),
                          (["report", str(empty)], "no evaluation"),
                          (["report", str(runs["supervised"]), "-o", str(a_file)], "not a directory"),
                          (["report", str(runs["supervised"]), "--tsne", "-1"], "tsne")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("semisup: error:") and message in err, err
    assert main(["report", str(runs["supervised"]), "-o", str(tmp_path / "ok"), "--tsne", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ok" / "report.html")


def test_stratified_sample_is_proportional_seeded_and_keeps_every_class():
    y = np.repeat(np.arange(4), [500, 300, 150, 3])
    idx = stratified_sample(y, 100, seed=1)
    assert len(idx) == 100 and len(set(idx)) == 100
    assert np.array_equal(idx, stratified_sample(y, 100, seed=1))
    assert not np.array_equal(idx, stratified_sample(y, 100, seed=2))
    per = np.bincount(y[idx], minlength=4)
    assert per.min() >= 1 and abs(per[0] - 52) <= 2 and abs(per[1] - 31) <= 2
    assert len(stratified_sample(y, 10_000, seed=0)) == len(y)


def _chromium(*args, timeout=90):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
             "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@needs_chromium
def test_report_loads_and_renders_in_a_real_browser(runs, tmp_path):
    """Chromium loads report.html from disk (no network) and renders it: a screenshot (saved beside the
    report: report/screenshot.png) that is not blank and shows the figures' colours; the DOM holds every
    figure's <img> with data; and, in a copy with a probe script, every image decodes to its real size."""
    out = build_report([runs["fixmatch"], runs["supervised"]], tmp_path / "rep", tsne_points=TSNE)
    html = out.read_text()
    shot = out.parent / "screenshot.png"
    r = _chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                  out.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert rgb.std() > 10, "blank screenshot"
    colourful = (rgb.max(-1) - rgb.min(-1) > 80).mean()  # plot lines/bars; text and backgrounds are grey
    assert colourful > 0.005, f"figures not rendered ({colourful:.4f} of pixels coloured)"
    for bad in ("Failed to load", "net::ERR_", "Not allowed to load", "Uncaught"):
        assert bad not in r.stderr, r.stderr[-2000:]

    r = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", out.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    dom = _embedded(r.stdout)
    assert sorted(dom) == sorted(_embedded(html).keys()) and all(len(v) > 1000 for v in dom.values())
    assert r.stdout.count("data-figure=") == html.count("data-figure=")

    probe = out.parent / "probe.html"
    probe.write_text(html.replace("</body>", """<script>
window.addEventListener("error", e => document.title = "ERROR " + e.message);
window.addEventListener("load", () => {
  const r = [...document.images].map(i => [i.dataset.figure, i.complete, i.naturalWidth, i.naturalHeight]);
  const d = document.createElement("pre"); d.id = "probe"; d.textContent = JSON.stringify(r); document.body.append(d);
});</script></body>"""))
    r = _chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", "--virtual-time-budget=10000",
                  probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout)
    assert found, r.stdout[-1000:] + r.stderr[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(images) == html.count("data-figure=")
    for key, complete, w, h in images:
        assert complete and w >= 300 and h >= 200, (key, w, h)


def test_pretraining_run_plots_its_embedding_instead_of_pseudo_labels(tmp_path):
    """A SimCLR run makes no pseudo-labels: the third curve panel shows the alignment / uniformity it
    logged (train.probe_images) and the losses panel its NT-Xent loss; a FixMatch run keeps the pseudo-labels."""
    from semisup.report import plots

    out = tmp_path / "simclr"
    train(C.resolve(overrides=tiny_overrides(out, steps=4, **{"algorithm.name": "simclr", "optim.ema": 0,
                                                                "train.eval_every": 2, "train.probe_images": 32})))
    fig = plots.curves(read_run(out))
    panel = fig.axes[2]
    assert panel.get_title().startswith("Embedding")
    assert [ln.get_label().split()[0] for ln in panel.get_lines()] == ["alignment", "uniformity"]
    assert "train loss_nt_xent" in [ln.get_label() for ln in fig.axes[1].get_lines()]
    fm = tmp_path / "fixmatch"
    train(C.resolve(overrides=tiny_overrides(fm, steps=4, **{"algorithm.threshold": 0.0, "train.eval_every": 2,
                                                               "train.probe_images": 32})))
    assert plots.curves(read_run(fm)).axes[2].get_title().startswith("Pseudo-labels")
