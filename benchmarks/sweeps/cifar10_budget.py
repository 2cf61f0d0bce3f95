"""CIFAR-10 with few labels in a fixed wall-clock budget on this machine: FixMatch against supervised.

Runs the presets `cifar10_4000_cpu` (FixMatch) and `cifar10_4000_cpu_supervised` (the same labelled images,
model, optimiser, EMA and 120-minute stop, no unlabelled images) on the CIFAR-10 JPEG folder, records each
in the log (benchmarks/records/cifar10_budget.jsonl), and writes the RESULTS.md section: test top-1 of the
evaluated (EMA) model after 15, 30, 60, 90 and 120 minutes of training (the last evaluation by then), the
final and best figures, the steps done, and the curve as a figure (benchmarks/figures/).

    python benchmarks/sweeps/cifar10_budget.py --data /tmp/cifar10-jpeg
    python benchmarks/sweeps/cifar10_budget.py --data /tmp/cifar10-jpeg --labels 250 --methods fixmatch

A run the preset's time limit stopped is a finished run (its budget is the point). A finished run folder
that is already where the sweep would write it (e.g. `semisup train --preset cifar10_4000_cpu ...` run by
hand with --run.out at the sweep's folder) is recorded without training again when its config.yaml is the
config the sweep's command resolves to (--adopt). Time figures depend on the CPU: the log and the section
name it; compare runs of one machine only.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # sweep.py beside it; results.py and records.py in benchmarks/
import records  # noqa: E402
import results  # noqa: E402
from sweep import add_common_args, chosen, precision, run_all  # noqa: E402

PRESETS = {"fixmatch": "cifar10_4000_cpu", "supervised": "cifar10_4000_cpu_supervised"}
CHECKPOINTS_MIN = (15, 30, 60, 90, 120)
FIGURES = HERE.parent / "figures"


def at_minutes(metrics: list[dict], minutes: float) -> float | None:
    """Test top-1 of the last evaluation made within ``minutes`` of training (None before the first)."""
    done = [r for r in metrics if r.get("train_seconds", float("inf")) <= minutes * 60 and "test" in r]
    return done[-1]["test"]["top1"] if done else None


def table(done: dict[tuple[str, int], dict]) -> list[str]:
    """One row per run: ``done[(method, seed)]`` = its log line."""
    head = " | ".join(f"{m} min" for m in CHECKPOINTS_MIN)
    body = [f"| method | seed | preset | steps done / planned | step s (median) | {head} | final | best (step) | "
            "minutes |", "|---|---|---|---|---|" + "---|" * len(CHECKPOINTS_MIN) + "---|---|---|"]
    for (name, seed), e in done.items():
        s, m, cfg = e["summary"], e["metrics"], e["config"]
        steps = [r["step_seconds_median"] for r in m if r.get("step_seconds_median")]  # one per evaluation
        cells = [at_minutes(m, t) for t in CHECKPOINTS_MIN]
        best = s["best"]
        body.append(f"| {name} | {seed} | `{PRESETS[name]}` | {s['steps']} / {cfg['train']['steps']} | "
                    f"{statistics.median(steps):.3f} | "
                    + " | ".join("–" if c is None else f"{100 * c:.2f}" for c in cells)
                    + f" | {100 * s['final']['test_top1']:.2f} | {100 * best['test_top1']:.2f} ({best['step']}) | "
                    f"{s['train_seconds'] / 60:.1f} |")
    return body


def figure(done: dict[tuple[str, int], dict], path: Path) -> None:
    """Test top-1 against minutes of training, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (name, seed), e in done.items():
        pts = [(r["train_seconds"] / 60, 100 * r["test"]["top1"]) for r in e["metrics"] if "test" in r]
        ax.plot(*zip(*pts), marker="o", ms=3, label=f"{name} (seed {seed})")
    ax.set(xlabel="minutes of training", ylabel="test top-1 (EMA model), %",
           title=f"CIFAR-10, {labels_of(next(iter(done.values()))['config'])} labels, WRN-28-2")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)


def labels_of(cfg: dict) -> int:
    return cfg["data"]["labels_per_class"] * 10


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the CIFAR-10 JPEG folder (train/<class>, test/<class>)")
    p.add_argument("--labels", type=int, default=4000, help="labelled images in all (a multiple of 10)")
    p.add_argument("--methods", default="fixmatch,supervised", help=f"of {', '.join(PRESETS)}")
    p.add_argument("--adopt", action="store_true",
                   help="record a finished run already in the sweep's folder instead of training it again")
    add_common_args(p, "cifar10_budget")
    a = p.parse_args(argv)
    methods = chosen(a.methods, PRESETS, a.labels)
    log = records.log_path(a.records)
    runs, cells = [], []
    for m in methods:
        for seed in [int(s) for s in a.seeds.split(",")]:
            key = f"l{a.labels}/{m}_s{seed}"
            out = Path(a.out) / key
            argv_ = ["semisup", "train", "--preset", PRESETS[m], f"--data.root={a.data}",
                     f"--data.labels_per_class={a.labels // 10}", f"--run.seed={seed}", f"--run.out={out}",
                     "--overwrite", "--run.progress=false",
                     *([f"--run.threads={a.threads}"] if a.threads else []), *shlex.split(a.extra)]
            runs.append((argv_, out, key))
            cells.append((m, seed))
    # a time-budget run is not continued from a checkpoint: its minutes would be of two sittings, maybe two CPUs
    entries = run_all(runs, log, a.jobs, a.force, adopt=a.adopt, resume=False)
    done = dict(zip(cells, entries))
    fig = FIGURES / f"cifar10_budget_l{a.labels}.png"
    if not a.no_write:
        figure(done, fig)
    cfg = entries[0]["config"]
    cpus = sorted({e.get("cpu") or "unknown CPU" for e in entries})
    body = [f"CIFAR-10, {a.labels} labels (seeded balanced draw), the JPEG folder; WRN-28-2, "
            f"{precision([e['summary'] for e in entries])}, B {cfg['train']['batch_size']}, EMA "
            f"{cfg['optim']['ema']} ({cfg['optim']['ema_warmup']} warm-up), cosine over the planned steps, a stop "
            f"after {cfg['train']['max_minutes']:g} minutes of training; trained on {', '.join(cpus)}. "
            f"Cells: test top-1 (EMA model, the whole 10,000-image test set) of the last evaluation within that "
            f"many minutes of training (evaluation time of earlier evaluations included); `best` is an "
            f"optimistic figure (chosen on test). Figure: {results.link(fig)}.\n", *table(done)]
    results.publish(f"CIFAR-10, {a.labels} labels in 2 hours on 2 cores", "\n".join(body),
                    write=not a.no_write, records=log)


if __name__ == "__main__":
    main()
