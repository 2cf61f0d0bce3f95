"""Fashion-MNIST with few labels: every algorithm side by side, same labels, model and budget.

Runs the `semisup` CLI (the run log keeps exactly what ran) for each label count, algorithm and seed,
`--jobs` runs at a time (each with `--threads` torch threads), then writes one RESULTS.md section per
label count (replacing the one of the same sweep, label count and algorithms): mean ± std over seeds of
the final test top-1 (EMA model at the last step), the best evaluation, balanced accuracy, and the
pseudo-label pass rate / accuracy of the last evaluation window (against the hidden labels of the
unlabelled images).

    python benchmarks/sweeps/fashion_mnist.py --labels 40,250 --seeds 0,1,2 --steps 1500 --mu 3 --jobs 2
    python benchmarks/sweeps/fashion_mnist.py --labels 40 --seeds 0 --steps 5000 --algorithms fixmatch,supervised

Each finished run is a line of the log `--records` (benchmarks/records/fashion_mnist.jsonl by default),
which is committed (see sweep.py): a sweep too long for one sitting continues in a later one where it
stopped. `--force` reruns everything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # sweep.py beside it; results.py and records.py in benchmarks/
import records  # noqa: E402
import results  # noqa: E402
from results import fmt  # noqa: E402
from sweep import add_common_args, last_record, precision, run_all, run_tail  # noqa: E402

ALGORITHMS = "supervised,pseudo_label,pi_model,mean_teacher,mixmatch,remixmatch,fixmatch"
# Per-algorithm settings beyond the shared budget: ReMixMatch's strong views come from CTAugment as in
# its paper; --remixmatch-k sets its number of strong views (K = 8 in the paper).
PER_ALG = {"remixmatch": ["--data.strong=ctaugment"]}
# Named variants (not in the default list): name -> (algorithm, overrides). pseudo_label_t95 is USB's
# thresholded Pseudo-Label (confidence >= 0.95), the control for the paper's unthresholded method;
# mixmatch_ramp04 ramps lambda_u over 40 % of the run instead of the paper's 1/64 (16k of 1M steps: in a
# 1000-step run, 16 steps), the short-run investigation in RESULTS.md; mean_teacher_d99 averages the teacher
# with decay 0.99 (the official code's SVHN ramp-up value) instead of 0.999, whose ~1000-step horizon is the
# whole of a 1000-step run; mean_teacher_rampup99 averages with 0.99 during the consistency ramp-up, then 0.999
# (the TensorFlow code's default, its SVHN runs); pseudo_label_a1 caps alpha(t) at 1 instead of the paper's 3
# (less weight on pseudo-labels that are ~55 % right at 40 labels); mixmatch_da adds ReMixMatch's distribution
# alignment to MixMatch's guess (the ablation for the class collapse of long 40-label MixMatch runs).
# *_ema_uniform evaluate the EMA with the earlier uniform warm-up (optim.ema_warmup=uniform), the control
# for the default's recent one.
# *_adam train with the optimiser of the algorithm's paper, whatever the default: MixMatch and ReMixMatch Adam
# lr 0.002 with decoupled weight decay 0.02 x lr and a constant lr (their codes; their default since the
# measurement in RESULTS.md); Pi-Model and Mean Teacher Adam lr 0.003 without weight decay (Laine & Aila; Mean Teacher's
# TensorFlow code), the cosine standing in for their ramp-down. mixmatch_sgd and remixmatch_sgd train with the
# shared SGD + cosine (their default until then), mixmatch_sgd at mu 1 as mixmatch_adam (mixmatch_mu1's records
# are such runs); mixmatch_usb trains with SGD as USB's config does. mixmatch_adam_cos is the reference's Adam with
# the shared cosine decay instead of its constant lr (the investigation of a late drift of one 250-label seed).
ADAM_MIXMATCH = ["--optim.name=adamw", "--optim.lr=0.002", "--optim.weight_decay=0.02", "--optim.schedule=constant"]
ADAM_PI = ["--optim.name=adamw", "--optim.lr=0.003", "--optim.weight_decay=0"]
VARIANTS = {"pseudo_label_t95": ("pseudo_label", ["--algorithm.threshold=0.95"]),
            "pseudo_label_a1": ("pseudo_label", ["--algorithm.alpha_f=1"]),
            "mixmatch_ramp04": ("mixmatch", ["--algorithm.rampup=0.4"]),
            "mixmatch_da": ("mixmatch", ["--algorithm.dist_align=true"]),
            "mean_teacher_d99": ("mean_teacher", ["--algorithm.decay=0.99"]),
            "mean_teacher_rampup99": ("mean_teacher", ["--algorithm.decay_rampup=0.99"]),
            "mixmatch_mu1": ("mixmatch", []),
            "mixmatch_usb": ("mixmatch", ["--algorithm.rampup=0.4", "--optim.name=sgd"]),
            "mixmatch_sgd": ("mixmatch", ["--optim.name=sgd"]),
            "remixmatch_sgd": ("remixmatch", ["--optim.name=sgd"]),
            "supervised_ema_uniform": ("supervised", ["--optim.ema_warmup=uniform"]),
            "fixmatch_ema_uniform": ("fixmatch", ["--optim.ema_warmup=uniform"]),
            "mixmatch_adam": ("mixmatch", ADAM_MIXMATCH),
            "remixmatch_adam": ("remixmatch", ADAM_MIXMATCH),
            "mixmatch_adam_cos": ("mixmatch", ["--optim.name=adamw", "--optim.lr=0.002", "--optim.weight_decay=0.02",
                                               "--optim.schedule=cosine"]),
            "pi_model_adam": ("pi_model", ADAM_PI),
            "mean_teacher_adam": ("mean_teacher", ADAM_PI)}
# Variants that change the unlabelled batch (train.mu) from the sweep's --mu: MixMatch's paper and USB's
# classic_cv configs draw as many unlabelled images as labelled ones (uratio 1); mixmatch_usb is USB's
# MixMatch as configured for CIFAR-10 40 labels (uratio 1, unsup_warm_up 0.4; its mixup alpha 0.5 aside).
VARIANT_MU = {"mixmatch_mu1": 1, "mixmatch_usb": 1, "mixmatch_adam": 1, "mixmatch_sgd": 1, "mixmatch_adam_cos": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", default="40", help="comma-separated total label counts (balanced, 10 classes)")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--mu", type=int, default=7, help="unlabelled batch = mu x 64")
    p.add_argument("--remixmatch-k", type=int, default=8, help="ReMixMatch's strong views per image")
    p.add_argument("--algorithms", default=ALGORITHMS, help=f"comma-separated; also the variants {', '.join(VARIANTS)}")
    add_common_args(p, "fashion_mnist")
    a = p.parse_args()
    labels = [int(n) for n in a.labels.split(",")]
    if any(n % 10 for n in labels):
        p.error("--labels must be multiples of 10 (a balanced split over the 10 classes)")
    algs = a.algorithms.split(",")
    jobs = plan(a, labels, algs, [int(s) for s in a.seeds.split(",")])  # (labels, alg, seed, argv, out)
    log = records.log_path(a.records)
    entries = run_all([(argv, out, out.relative_to(a.out).as_posix()) for *_, argv, out in jobs], log, a.jobs,
                      a.force)
    done = [(job, e["summary"], last_record(e).get("train", {}), e["config"]) for job, e in zip(jobs, entries)]

    desc = describe(done[0][3], [s for _, s, _, _ in done], a, {job[1]: cfg for job, _, _, cfg in done})
    for n in labels:
        title = f"Fashion-MNIST, {n} labels, {log.stem}: {', '.join(algs)}"
        body = "\n".join([desc, *table([d for d in done if d[0][0] == n], algs, done[0][3]["train"]["mu"])])
        results.publish(title, body, write=not a.no_write, records=log)


def plan(a: argparse.Namespace, labels: list[int], algs: list[str], seeds: list[int]) -> list[tuple]:
    """One (labels, alg, seed, argv, out) per run, labels outermost."""
    jobs = []
    for n in labels:
        for seed in seeds:
            for alg in algs:
                out = Path(a.out) / f"l{n}" / f"{alg}_s{seed}"
                base, var = VARIANTS.get(alg, (alg, []))
                extra = var + PER_ALG.get(base, [])
                extra += [f"--algorithm.K={a.remixmatch_k}"] if base == "remixmatch" else []
                argv = ["semisup", "train", "--preset", "fashion_mnist_40", f"--data.labels_per_class={n // 10}",
                        f"--algorithm.name={base}", *extra, *run_tail(a, seed, out, VARIANT_MU.get(alg))]
                jobs.append((n, alg, seed, argv, out))
    return jobs


def describe(cfg: dict, summaries: list[dict], a: argparse.Namespace, configs: dict[str, dict]) -> str:
    """The protocol of the sweep's runs, from the first run's config (the optimiser from every run's:
    ``configs``, algorithm -> config), in one paragraph."""
    tr, op, rn = cfg["train"], cfg["optim"], cfg["run"]
    return (f"Test set: the 10,000 Fashion-MNIST test images. Labels: N/10 per class drawn with the run seed, the "
            f"rest of the 60,000 train images unlabelled (hidden labels kept to score pseudo-labels). Every run: "
            f"model {cfg['model']['name']} (width {cfg['model']['width']}), {tr['steps']} steps, B "
            f"{tr['batch_size']}, mu {tr['mu']}, {results.optimiser(configs)}, EMA {op['ema']} (evaluated model), "
            f"{precision(summaries)} (run.amp={rn['amp']}), "
            f"channels_last {rn['channels_last']}, each "
            f"algorithm with its paper's defaults (ReMixMatch: CTAugment, K = {a.remixmatch_k} strong views). "
            f"`final` = test top-1 of the EMA model after the last step (quote this); `best` = the best of the "
            f"evaluations every {tr['eval_every']} steps (selected on the test set, as USB reports; optimistic). "
            f"Pass rate / PL acc: share of unlabelled images whose pseudo-label passed the algorithm's mask, and "
            f"accuracy of those that passed, over the last {tr['eval_every']} steps. mean ± std over seeds "
            f"{a.seeds}; minutes are wall time with {a.jobs} run(s) side by side on the 2 cores.\n")


def table(done: list[tuple], algs: list[str], mu: int) -> list[str]:
    """The markdown rows of one label count: ``done`` = (job, summary, last train record, config) per run."""
    n = done[0][0][0]
    rows = [f"**{n} labels**\n",
            "| algorithm | seeds | final top-1 | best top-1 | balanced acc | pass rate | PL acc | minutes "
            "| peak RSS MB | per seed (final) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for alg in algs:
        runs = [(s, t) for j, s, t, _ in done if j[1] == alg]
        mus = {c["train"]["mu"] for j, _, _, c in done if j[1] == alg}
        label = alg if mus == {mu} else f"{alg} (mu {', '.join(map(str, sorted(mus)))})"
        fin = [s["final"]["test_top1"] * 100 for s, _ in runs]
        best = [s["best"]["test_top1"] * 100 for s, _ in runs]
        bal = [s["final"]["test_balanced_acc"] * 100 for s, _ in runs]
        mins = [s["train_seconds"] / 60 for s, _ in runs]
        pr = [t["pass_rate"] * 100 for _, t in runs if "pass_rate" in t]
        pl = [t["pl_acc"] * 100 for _, t in runs if "pl_acc" in t]
        rows.append(f"| {label} | {len(runs)} | {fmt(fin)} | {fmt(best)} | {fmt(bal)} | {fmt(pr)} | {fmt(pl)} | "
                    f"{fmt(mins)} | {max(s.get('peak_rss_mb', 0) for s, _ in runs):.0f} | "
                    f"{', '.join(f'{v:.2f}' for v in fin)} |")
    return rows


if __name__ == "__main__":
    main()
