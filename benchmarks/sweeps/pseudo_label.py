"""Pseudo-Label against supervised on the seed experiment's protocol (the `mnist_pl_seed` preset): which part of
Pseudo-Label costs accuracy when the supervised baseline is already strong.

Every run is `semisup train --preset mnist_pl_seed` (LeNet with dropout 0.5, SGD 0.1, 3000 steps, 1000 labelled
images, 19,000 unlabelled, a seeded 5,000-image test subset, alpha(t) over steps 100-700 up to 3, labels from an
eval-mode pass) with one change per method (METHODS); `--labels` varies the baseline's strength, `--data` the
dataset (MNIST is the seed's; these machines have Fashion-MNIST). Runs of one seed share the labelled split, so
the table gives each method's paired difference from supervised, seed by seed.

    python benchmarks/sweeps/pseudo_label.py --data fashion_mnist --labels 1000 --seeds 0,1,2 --jobs 2 --threads 1

Each finished run is a line of the log `--records` (benchmarks/records/pseudo_label.jsonl by default; see
sweep.py), so the sweep continues in a later sitting.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # sweep.py beside it; results.py and records.py in benchmarks/
import records  # noqa: E402
import results  # noqa: E402
from results import fmt  # noqa: E402
from sweep import add_common_args, chosen, last_record, precision, run_all  # noqa: E402

# name -> overrides of the preset (whose Pseudo-Label is the seed's: eval-mode labels, alpha_f 3, no threshold)
METHODS = {
    "supervised": ["--algorithm.name=supervised"],
    "pl": [],
    "pl(same_pass)": ["--algorithm.label_from=same_pass"],  # labels from the dropout pass that is trained (USB's)
    "pl(alpha_f=1)": ["--algorithm.alpha_f=1"],  # the pseudo-labels weigh as much as the labels, not three times
    "pl(t95)": ["--algorithm.threshold=0.95"],  # only confident pseudo-labels (USB's Pseudo-Label)
    "pl(da)": ["--algorithm.dist_align=true"],  # pseudo-labels aligned to the labelled class distribution
    "pl(raw)": ["--optim.ema=0"],  # no EMA: the raw weights evaluated (supervised(raw) is its control)
    "supervised(raw)": ["--algorithm.name=supervised", "--optim.ema=0"],
}


def paired(done: dict, method: str, seeds: list[int]) -> list[float]:
    """Per seed: the method's final top-1 minus supervised's (same split), in points."""
    base = "supervised(raw)" if method == "pl(raw)" else "supervised"
    top1 = {k: e["summary"]["final"]["test_top1"] for k, e in done.items()}
    return [100 * (top1[(method, s)] - top1[(base, s)]) for s in seeds if (base, s) in top1]


def recalls(done: dict, method: str, seeds: list[int]) -> list[list[float]]:
    """Per seed: the final evaluation's test recall of each class."""
    return [last_record(done[(method, s)])["test"]["per_class_recall"] for s in seeds if (method, s) in done]


def weakest_class(done: dict, methods: list[str], seeds: list[int]) -> int:
    """The class with the lowest mean final recall under supervised (under the first method without it)."""
    rs = recalls(done, "supervised" if "supervised" in methods else methods[0], seeds)
    return min(range(len(rs[0])), key=lambda k: sum(r[k] for r in rs))


def table(done: dict, methods: list[str], seeds: list[int]) -> list[str]:
    k = weakest_class(done, methods, seeds)
    body = [f"| method | seeds | final top-1 | best top-1 | minus supervised (paired) | recall of class {k} | "
            "pass rate | PL acc (passed) | PL acc (all) | per seed (final) |", "|---" * 10 + "|"]
    for m in methods:
        es = [done[(m, s)] for s in seeds]
        fin = [100 * e["summary"]["final"]["test_top1"] for e in es]
        best = [100 * e["summary"]["best"]["test_top1"] for e in es]
        train = [last_record(e).get("train", {}) for e in es]
        cols = [fmt([100 * t[k] for t in train if k in t]) for k in ("pass_rate", "pl_acc", "pl_acc_all")]
        diff = fmt(paired(done, m, seeds)) if not m.startswith("supervised") else "–"
        low = fmt([100 * r[k] for r in recalls(done, m, seeds)])
        body.append(f"| {m} | {len(es)} | {fmt(fin)} | {fmt(best)} | {diff} | {low} | {' | '.join(cols)} | "
                    f"{', '.join(f'{v:.2f}' for v in fin)} |")
    return body


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist", help="data.name (mnist: the seed's; fashion_mnist where MNIST is absent)")
    p.add_argument("--labels", type=int, default=1000, help="labelled images in all (a multiple of 10)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    add_common_args(p, "pseudo_label")
    a = p.parse_args(argv)
    methods = chosen(a.methods, METHODS, a.labels)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs, cells = [], []
    for seed in seeds:
        for m in methods:
            key = f"{a.data}_l{a.labels}/{m}_s{seed}"
            out = Path(a.out) / key
            argv_ = ["semisup", "train", "--preset", "mnist_pl_seed", f"--data.name={a.data}",
                     f"--data.labels_per_class={a.labels // 10}", *METHODS[m], f"--run.seed={seed}", f"--run.out={out}",
                     "--overwrite", "--run.progress=false", *([f"--run.threads={a.threads}"] if a.threads else []),
                     *shlex.split(a.extra)]
            runs.append((argv_, out, key))
            cells.append((m, seed))
    log = records.log_path(a.records)
    entries = run_all(runs, log, a.jobs, a.force)
    done = dict(zip(cells, entries))
    # the protocol from a Pseudo-Label run where there is one (supervised resolves train.mu=auto to 0)
    cfg = next((e["config"] for (m, _), e in done.items() if not m.startswith("supervised")), entries[0]["config"])
    d, tr = cfg["data"], cfg["train"]
    amp = precision([e["summary"] for e in entries])
    body = [f"Protocol `mnist_pl_seed` on {a.data}: {a.labels} labelled images (seeded, balanced), "
            f"{d['max_unlabelled']} unlabelled (a seeded subset of the rest), a seeded {d['test_subset']}-image test "
            f"subset; {cfg['model']['name']}, {tr['steps']} steps, B {tr['batch_size']}, mu {tr['mu']}, SGD "
            f"{cfg['optim']['lr']} momentum {cfg['optim']['momentum']}, EMA {cfg['optim']['ema']} (evaluated), {amp}. "
            f"`minus supervised`: the method's final top-1 minus supervised's on the same seed (the same labelled "
            f"images), mean ± std over seeds {a.seeds} (pl(raw) against supervised(raw)). Pass rate / PL acc: the "
            f"pseudo-labels of the last {tr['eval_every']} steps against the hidden labels. `recall of class k`: the "
            f"final test recall of the class that supervised recognises worst (lowest mean recall).\n",
            *table(done, methods, seeds)]
    results.publish(f"Pseudo-Label against a strong supervised baseline, {a.data}, {a.labels} labels",
                    "\n".join(body), write=not a.no_write, records=log)


if __name__ == "__main__":
    main()
