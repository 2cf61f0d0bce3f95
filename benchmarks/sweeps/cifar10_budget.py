"""CIFAR-10 with few labels in a fixed wall-clock budget on this machine: FixMatch against supervised.

Runs the presets `cifar10_4000_cpu` (FixMatch), `cifar10_4000_cpu_supervised` (the same labelled images,
model, optimiser, EMA and 120-minute stop, no unlabelled images) and `warm` (30 minutes of supervised
training, `cifar10_4000_cpu_warmup`, then 90 of FixMatch from its whole model, `cifar10_4000_cpu_warm`) on
the CIFAR-10 JPEG folder, records each run in the log (benchmarks/records/cifar10_budget.jsonl), and writes
the RESULTS.md section: test top-1 of the evaluated (EMA) model after 15, 30, 60, 90 and 120 minutes of
training (the last evaluation by then; a two-part run's minutes are those of both parts), the final and best
figures, the steps done, and the curve as a figure (benchmarks/figures/).

    python benchmarks/sweeps/cifar10_budget.py --data /tmp/cifar10-jpeg
    python benchmarks/sweeps/cifar10_budget.py --data /tmp/cifar10-jpeg --labels 250 --methods fixmatch
    python benchmarks/sweeps/cifar10_budget.py --data /tmp/cifar10-jpeg --methods warm

A run the preset's time limit stopped is a finished run (its budget is the point). A finished run folder
that is already where the sweep would write it (e.g. `semisup train --preset cifar10_4000_cpu ...` run by
hand with --run.out at the sweep's folder) is recorded without training again when its config.yaml is the
config the sweep's command resolves to (--adopt). Time figures depend on the CPU: the log and the section
name it; compare runs of one machine only.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # sweep.py beside it; results.py and records.py in benchmarks/
import records  # noqa: E402
import results  # noqa: E402
from sweep import add_common_args, chosen, precision, run_all  # noqa: E402

PRESETS = {"fixmatch": "cifar10_4000_cpu", "supervised": "cifar10_4000_cpu_supervised", "warm": "cifar10_4000_cpu_warm"}
# a method's first part, whose last.pt (encoder and head) the method's own preset starts from
FIRST_PART = {"warm": "cifar10_4000_cpu_warmup"}
CHECKPOINTS_MIN = (15, 30, 60, 90, 120)
FIGURES = HERE.parent / "figures"


def at_minutes(metrics: list[dict], minutes: float) -> float | None:
    """Test top-1 of the last evaluation made within ``minutes`` of training (None before the first)."""
    done = [r for r in metrics if r.get("train_seconds", float("inf")) <= minutes * 60 and "test" in r]
    return done[-1]["test"]["top1"] if done else None


def timeline(parts: list[dict]) -> list[dict]:
    """The evaluations of a run made of ``parts`` (log lines, in order), each part's training seconds counted
    after those of the parts before it."""
    return [{**r, "train_seconds": r["train_seconds"] + t0} for e, t0 in zip(parts, part_starts(parts))
            for r in e["metrics"] if "train_seconds" in r]


def part_starts(parts: list[dict]) -> list[float]:
    """The training second at which each of a run's ``parts`` starts."""
    return list(itertools.accumulate((e["summary"]["train_seconds"] for e in parts[:-1]), initial=0.0))


def table(done: dict[tuple[str, int], list[dict]]) -> list[str]:
    """One row per run: ``done[(method, seed)]`` = the log lines of its parts (one, or a first part and the
    method's own run); a two-part row joins its figures with ' + '."""
    head = " | ".join(f"{m} min" for m in CHECKPOINTS_MIN)
    body = [f"| method | seed | preset | steps done / planned | step s (median) | {head} | final | best (step) | "
            "minutes |", "|---|---|---|---|---|" + "---|" * len(CHECKPOINTS_MIN) + "---|---|---|"]
    for (name, seed), parts in done.items():
        m = timeline(parts)
        steps = [statistics.median(r["step_seconds_median"] for r in e["metrics"] if r.get("step_seconds_median"))
                 for e in parts]  # one median per part, of one figure per evaluation
        cells = [at_minutes(m, t) for t in CHECKPOINTS_MIN]
        best_at, best = max(enumerate(e["summary"]["best"] for e in parts), key=lambda b: b[1]["test_top1"])
        where = f"{best['step']}" if len(parts) == 1 else f"part {best_at + 1}, step {best['step']}"
        presets = " → ".join(f"`{p}`" for p in presets_of(name))
        body.append(f"| {name} | {seed} | {presets} | "
                    + " + ".join(str(e["summary"]["steps"]) for e in parts) + " / "
                    + " + ".join(str(e["config"]["train"]["steps"]) for e in parts) + " | "
                    + " + ".join(f"{x:.3f}" for x in steps) + " | "
                    + " | ".join("–" if c is None else f"{100 * c:.2f}" for c in cells)
                    + f" | {100 * parts[-1]['summary']['final']['test_top1']:.2f} | {100 * best['test_top1']:.2f} "
                    f"({where}) | {sum(e['summary']['train_seconds'] for e in parts) / 60:.1f} |")
    return body


def presets_of(method: str) -> list[str]:
    """The presets a method runs, in order."""
    return [*([FIRST_PART[method]] if method in FIRST_PART else []), PRESETS[method]]


def figure(done: dict[tuple[str, int], list[dict]], path: Path) -> None:
    """Test top-1 against minutes of training, one line per run (a two-part run's line is marked where its
    second part starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (name, seed), parts in done.items():
        pts = [(r["train_seconds"] / 60, 100 * r["test"]["top1"]) for r in timeline(parts) if "test" in r]
        line, = ax.plot(*zip(*pts), marker="o", ms=3, label=f"{name} (seed {seed})")
        for t in part_starts(parts)[1:]:
            ax.axvline(t / 60, color=line.get_color(), ls=":", lw=1)
    ax.set(xlabel="minutes of training", ylabel="test top-1 (EMA model), %",
           title=f"CIFAR-10, {labels_of(next(iter(done.values()))[0]['config'])} labels, WRN-28-2")
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
    p.add_argument("--methods", default="fixmatch,supervised,warm", help=f"of {', '.join(PRESETS)}")
    p.add_argument("--adopt", action="store_true",
                   help="record a finished run already in the sweep's folder instead of training it again")
    add_common_args(p, "cifar10_budget")
    a = p.parse_args(argv)
    methods = chosen(a.methods, PRESETS, a.labels)
    log = records.log_path(a.records)

    def command(preset: str, key: str, seed: int, *more: str) -> tuple[list[str], Path, str]:
        out = Path(a.out) / key
        return (["semisup", "train", "--preset", preset, f"--data.root={a.data}",
                 f"--data.labels_per_class={a.labels // 10}", f"--run.seed={seed}", f"--run.out={out}",
                 "--overwrite", "--run.progress=false", *more,
                 *([f"--run.threads={a.threads}"] if a.threads else []), *shlex.split(a.extra)], out, key)

    runs, firsts, cells = [], {}, []
    for m in methods:
        for seed in [int(s) for s in a.seeds.split(",")]:
            more = []
            if m in FIRST_PART:  # e.g. FixMatch from the model a supervised first part ends with
                firsts[(m, seed)] = command(FIRST_PART[m], f"l{a.labels}/{m}up_s{seed}", seed)
                more = [f"--model.init_from={firsts[(m, seed)][1] / 'last.pt'}"]
            runs.append(command(PRESETS[m], f"l{a.labels}/{m}_s{seed}", seed, *more))
            cells.append((m, seed))
    # a time-budget run is not continued from a checkpoint: its minutes would be of two sittings, maybe two CPUs
    before = records.read(log) if log.exists() else {}
    first = dict(zip(firsts, run_all(list(firsts.values()), log, a.jobs, a.force, adopt=a.adopt, resume=False)))
    stale = [r[2] for c, r in zip(cells, runs)
             if c in first and first[c].get("date") != before.get(firsts[c][2], {}).get("date")]
    if stale:  # a first part trained again: the second parts recorded from its previous model are not these runs
        records.write(log, {k: v for k, v in records.read(log).items() if k not in stale})
    entries = run_all(runs, log, a.jobs, a.force, adopt=a.adopt, resume=False)
    done = {c: [*([first[c]] if c in first else []), e] for c, e in zip(cells, entries)}
    fig = FIGURES / f"cifar10_budget_l{a.labels}.png"
    if not a.no_write:
        figure(done, fig)
    every = [e for parts in done.values() for e in parts]
    cfg = entries[0]["config"]
    cpus = sorted({e.get("cpu") or "unknown CPU" for e in every})
    # a run's step time depends on its allocator as well (a bare jemalloc preload: 0.72x; RESULTS.md)
    allocators = sorted({e["summary"].get("allocator") or "not recorded" for e in every})
    minutes = sum(e["config"]["train"]["max_minutes"] for e in next(iter(done.values())))
    body = [f"CIFAR-10, {a.labels} labels (seeded balanced draw), the JPEG folder; WRN-28-2, "
            f"{precision([e['summary'] for e in every])}, B {cfg['train']['batch_size']}, EMA "
            f"{cfg['optim']['ema']} ({cfg['optim']['ema_warmup']} warm-up), cosine over the planned steps, a stop "
            f"after {minutes:g} minutes of training (a two-part run: of both parts); trained on {', '.join(cpus)}, "
            f"allocator {', '.join(allocators)} (the runs' summary.json). "
            f"Cells: test top-1 (EMA model, the whole 10,000-image test set) of the last evaluation within that "
            f"many minutes of training (evaluation time of earlier evaluations included); `best` is an "
            f"optimistic figure (chosen on test). Figure: {results.link(fig)}.\n", *table(done)]
    results.publish(f"CIFAR-10, {a.labels} labels in 2 hours on 2 cores", "\n".join(body),
                    write=not a.no_write, records=log)


if __name__ == "__main__":
    main()
