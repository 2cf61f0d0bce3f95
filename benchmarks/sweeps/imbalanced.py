"""Class-imbalanced SSL side by side on a long-tailed CPU-scale protocol, same model, labels and budget.

Default protocol: the `fashion_mnist_lt100` preset (DASO's CIFAR-10-LT gamma = 100 setting on Fashion-MNIST:
labelled N_k = [500, 299, 179, 107, 64, 38, 23, 13, 8, 5], unlabelled M1 = 4000 long-tailed the same way,
balanced 10,000-image test set). `--preset cifar10_folder_lt100 --extra "--data.root=DIR"` runs the CIFAR-10
image folder instead. Methods (each a `semisup train` command; see METHODS): supervised, FixMatch, FixMatch
with the class-balanced / focal / Adaptive Regularization unlabelled losses (and the ARL variants, "l+u"
being ARL on the labelled term too), DASO, ABC, ACR, and ReMixMatch with and without DASO (CTAugment,
K = 2). Writes its RESULTS.md section (replacing the one of the same log, preset and methods): overall
top-1, head / medium / tail recall, geometric mean of recalls, minority recall, APR and LER (mean ± std over
seeds), the per-class pass rate, the class weight BCE / ARL put on the passed pseudo-labels and on the
labelled images (their share of CE's), then DASO's per-class pseudo-label recall of its linear and similarity
classifiers on the unlabelled images (against their hidden labels); on the ARL paper's CIFAR-10-LT protocol
(`--preset cifar10_lt_arl`, gamma 50 / 100 / 200) the paper's top-1, APR and LER beside ours, and both orders.

    python benchmarks/sweeps/imbalanced.py --seeds 0,1,2 --steps 1000 --mu 2 --jobs 2 --threads 1

Each finished run is a line of the committed log `--records` (benchmarks/records/imbalanced.jsonl by default;
see sweep.py), so the sweep continues in a later sitting.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # sweep.py beside it; results.py and records.py in benchmarks/
import records  # noqa: E402
import results  # noqa: E402
from results import fmt  # noqa: E402
from sweep import add_common_args, last_record, precision, run_all, run_tail  # noqa: E402

# name -> overrides; every FixMatch-family method keeps FixMatch's threshold 0.95 and lambda_u 1.
METHODS = {
    "supervised": ["--algorithm.name=supervised"],
    "fixmatch": ["--algorithm.name=fixmatch"],
    "fixmatch+bce": ["--algorithm.name=fixmatch", "--algorithm.loss_u=bce"],
    "fixmatch+focal": ["--algorithm.name=fixmatch", "--algorithm.loss_u=focal"],
    # the ARL paper's columns: arl = "Ours (gamma 1)", arl(x2) = "Ours (gamma 2)", arl(l+u) = "Ours+" (the reference
    # code); arl(detach) holds p_y in the exponent constant, with N_min / N_k for alpha (semisup's earlier default)
    "fixmatch+arl": ["--algorithm.name=fixmatch", "--algorithm.loss_u=arl"],
    "fixmatch+arl(detach)": ["--algorithm.name=fixmatch", "--algorithm.loss_u=arl", "--algorithm.arl_detach=true",
                             "--algorithm.arl_alpha=inverse"],
    "fixmatch+arl(x2)": ["--algorithm.name=fixmatch", "--algorithm.loss_u=arl", "--algorithm.arl_gamma_scale=2"],
    "fixmatch+arl(l+u)": ["--algorithm.name=fixmatch", "--algorithm.loss_u=arl", "--algorithm.loss_x=arl"],
    # the ARL paper's table as explicit settings (both terms named, so a preset's own loss_x / loss_u cannot leak
    # in): CE, BCE, Ours (gamma 1), Ours (gamma 2), Ours+ (the reference code, the cifar10_lt_arl preset)
    "CE": ["--algorithm.name=fixmatch", "--algorithm.loss_u=ce", "--algorithm.loss_x=ce"],
    "BCE": ["--algorithm.name=fixmatch", "--algorithm.loss_u=bce", "--algorithm.loss_x=ce"],
    "ARL(g1)": ["--algorithm.name=fixmatch", "--algorithm.loss_u=arl", "--algorithm.loss_x=ce"],
    "ARL(g2)": ["--algorithm.name=fixmatch", "--algorithm.loss_u=arl", "--algorithm.loss_x=ce",
                "--algorithm.arl_gamma_scale=2"],
    "ARL+": ["--algorithm.name=fixmatch", "--algorithm.loss_u=arl", "--algorithm.loss_x=arl"],
    # a test of why BCE and ARL trail CE in short runs on a long tail: CE with its unlabelled term scaled to the mean
    # class weight BCE's and ARL's passed pseudo-labels had over 3000 steps of cifar10_lt_arl (0.067; RESULTS.md)
    "CE(lambda_u=0.067)": ["--algorithm.name=fixmatch", "--algorithm.loss_u=ce", "--algorithm.loss_x=ce",
                           "--algorithm.lambda_u=0.067"],
    "daso": ["--algorithm.name=daso"],
    # the investigation of DASO's low pass rate on the visually similar medium classes: T_dist 0.3 (the paper's
    # value for mismatched distributions) blends the similarity classifier into head-class pseudo-labels only
    "daso(T_dist=0.3)": ["--algorithm.name=daso", "--algorithm.T_dist=0.3"],
    "abc": ["--algorithm.name=abc"],
    # ABCfix.py's optimiser (abc's default since its measurement: RESULTS.md): Adam 0.002, weight decay 0.02 x lr
    # applied to the weights, constant lr; abc(sgd) is the shared SGD + cosine, the default until then
    "abc(sgd)": ["--algorithm.name=abc", "--optim.name=sgd"],
    "abc(adam)": ["--algorithm.name=abc", "--optim.name=adamw", "--optim.lr=0.002", "--optim.weight_decay=0.02",
                  "--optim.schedule=constant"],
    "acr": ["--algorithm.name=acr"],
    # the investigation of ACR's short-run collapse: the logit adjustments at tau = 1 instead of 2
    "acr(tau=1)": ["--algorithm.name=acr", "--algorithm.tau1=1", "--algorithm.tau12=1", "--algorithm.tau2=1"],
    "remixmatch": ["--algorithm.name=remixmatch", "--data.strong=ctaugment", "--algorithm.K=2"],
    "remixmatch+daso": ["--algorithm.name=daso_remixmatch", "--data.strong=ctaugment", "--algorithm.K=2"],
}
# The ARL paper's CIFAR-10-LT table (beta 20 %, N1 1000, WRN-28-2, tau 0.95, 2^20 steps, mu 7): gamma_l ->
# method -> test top-1 %, and at gamma 100 its APR (mean, std, as fractions) and LER.
PAPER_TOP1 = {50: {"CE": 82.06, "BCE": 84.42, "ARL(g1)": 85.11, "ARL(g2)": 84.00, "ARL+": 85.13},
              100: {"CE": 73.17, "BCE": 76.61, "ARL(g1)": 79.17, "ARL(g2)": 78.37, "ARL+": 80.00},
              200: {"CE": 66.37, "BCE": 69.45, "ARL(g1)": 70.62, "ARL(g2)": 71.52, "ARL+": 72.61}}
PAPER_APR = {"CE": (0.98, 0.02), "BCE": (0.85, 0.05), "ARL(g1)": (0.82, 0.06), "ARL(g2)": (0.77, 0.08),
             "ARL+": (0.78, 0.08)}
PAPER_LER = {"CE": 0.755, "BCE": 0.9, "ARL(g1)": 0.96, "ARL(g2)": 1.03, "ARL+": 1.05}
# ReMixMatch with and without DASO only when asked (--methods ...,remixmatch,remixmatch+daso): ~2x a FixMatch run;
# the scaled-down CE only when asked too
DEFAULT_METHODS = [m for m in METHODS if not m.startswith(("remixmatch", "CE(lambda_u"))]
GROUPS = ("head_recall", "medium_recall", "tail_recall")


def method_argv(name: str, steps: int) -> list[str]:
    argv = list(METHODS[name])
    if name.startswith("acr"):  # its estimation schedule is in steps (3000 / 500 of 250k in the reference): scale it
        argv += [f"--algorithm.est_start={max(1, steps // 10)}", f"--algorithm.est_window={max(1, steps // 20)}"]
    return argv


def slug(name: str) -> str:
    return name.replace("+", "_plus" if name.endswith("+") else "_").replace("(", "_").replace(")", "").replace("=", "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion_mnist_lt100")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--mu", type=int, default=2, help="unlabelled batch = mu x 64 (DASO's protocol: 2)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    add_common_args(p, "imbalanced")
    a = p.parse_args()
    methods, seeds = a.methods.split(","), [int(s) for s in a.seeds.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    runs, keys = [], []  # (argv, out, log key), (method, seed)
    for seed in seeds:
        for m in methods:
            out = Path(a.out) / a.preset / f"{slug(m)}_s{seed}"
            argv = ["semisup", "train", "--preset", a.preset, *method_argv(m, a.steps), *run_tail(a, seed, out)]
            runs.append((argv, out, out.relative_to(a.out).as_posix()))
            keys.append((m, seed))
    log = records.log_path(a.records)
    entries = run_all(runs, log, a.jobs, a.force)
    done = {key: (e["summary"], last_record(e), e["config"]) for key, e in zip(keys, entries)}
    history = {key: e["metrics"] for key, e in zip(keys, entries)}
    cfg = next(iter(done.values()))[2]
    configs = {m: c for (m, _), (_, _, c) in done.items()}
    body = [describe(a, cfg, [s for s, _, _ in done.values()], configs), *main_table(done, methods, seeds),
            *pass_table(done, methods, seeds, cfg["train"]["eval_every"]), *weight_table(done, history, methods, seeds),
            *daso_tables(done, methods, seeds, cfg["train"]["eval_every"]), *paper_table(done, methods, seeds, cfg)]
    title = f"Class-imbalanced SSL, {a.preset}, {log.stem}: {', '.join(methods)}"
    results.publish(title, "\n".join(body), write=not a.no_write, records=log)


def describe(a: argparse.Namespace, cfg: dict, summaries: list[dict], configs: dict[str, dict]) -> str:
    """The protocol and the columns, from the first run's config (the strong view and the optimiser from every
    run's: ``configs``, method -> config), in one paragraph."""
    d, tr, op = cfg["data"], cfg["train"], cfg["optim"]
    strong = results.per_run(configs, lambda c: c["data"]["strong"])
    unl = (f"labelled ratio beta {d['label_ratio']:g} % (unlabelled head (100 - beta) / beta x N1, long-tailed alike)"
           if d["split"] == "ratio" else f"unlabelled M1 {d['m1']} ({d['unlabelled_dist']})")
    return (f"Protocol `{a.preset}`: {d['name']}, long-tailed labelled N1 {d['n1']}, gamma_l {d['gamma_l']}, "
            f"{unl}, strong view {strong}, balanced test set; groups by labelled count "
            f"(head = first 30 % of classes, medium = middle 40 %, tail = last 30 %). Every run: model "
            f"{cfg['model']['name']} (width {cfg['model']['width']}), {tr['steps']} steps, B {tr['batch_size']}, "
            f"mu {tr['mu']}, {results.optimiser(configs)}, EMA {op['ema']} (evaluated), "
            f"{precision(summaries)}; threshold 0.95 throughout; ACR's estimation starts at "
            f"10 % of the run and re-estimates every 5 % (the reference: step 3000, every 500, of 250k). `top-1` "
            f"= test top-1 of the final model (for ABC and ACR their balanced head, as they infer); APR = pass rate "
            f"of pseudo-labels over the evaluations within +-{tr.get('apr_window', 0.1):g} of the run around the "
            f"best one (mean ± std over those evaluations, then averaged over seeds); LER = top-1 / APR (our "
            f"reading of the ARL paper's learning efficiency). mean ± std over seeds {a.seeds}.\n")


def main_table(done: dict, methods: list[str], seeds: list[int]) -> list[str]:
    """One row per method: ``done[(method, seed)]`` = (summary, last metrics line, config)."""
    body = ["| method | seeds | top-1 | head | medium | tail | gmean | minority | APR % | LER | PL acc | "
            "minutes | per seed (top-1) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        rows = [done[(m, s)] for s in seeds]
        top1 = [r[0]["final"]["test_top1"] * 100 for r in rows]
        grp = [fmt([r[1]["test"][g] * 100 for r in rows]) for g in GROUPS]
        gm = fmt([r[1]["test"]["gmean_recall"] * 100 for r in rows])
        mino = fmt([r[1]["test"]["minority_recall"] * 100 for r in rows])
        apr = [r[0]["apr"]["mean"] * 100 for r in rows if r[0].get("apr")]
        ler = [r[0]["ler"] for r in rows if r[0].get("ler") is not None]
        pl = [r[1]["train"]["pl_acc"] * 100 for r in rows if "pl_acc" in r[1].get("train", {})]
        mins = [r[0]["train_seconds"] / 60 for r in rows]
        body.append(f"| {m} | {len(rows)} | {fmt(top1)} | {' | '.join(grp)} | {gm} | {mino} | {fmt(apr)} | "
                    f"{fmt(ler, 3)} | {fmt(pl)} | {fmt(mins, 1)} | {', '.join(f'{v:.2f}' for v in top1)} |")
    return body


def pass_table(done: dict, methods: list[str], seeds: list[int], every: int) -> list[str]:
    """Per-class pass rate of the methods that report one (none for supervised)."""
    passing = {m: [done[(m, s)][1]["train"].get("per_class_pass_rate") for s in seeds] for m in methods}
    passing = {m: v for m, v in passing.items() if all(v)}
    if not passing:
        return []
    k = len(next(iter(passing.values()))[0])
    body = [f"\nPer-class pass rate: share of the unlabelled images of each (hidden) class whose pseudo-label "
            f"passed the method's mask, over the last {every} steps (mean over seeds; class 0 is "
            "the head).\n", "| method | " + " | ".join(f"c{c}" for c in range(k)) + " | all |",
            "|---|" + "---|" * (k + 1)]
    for m, v in passing.items():
        per = [statistics.mean(x[c] for x in v) * 100 for c in range(k)]
        allp = statistics.mean(done[(m, s)][1]["train"]["pass_rate"] for s in seeds) * 100
        body.append(f"| {m} | " + " | ".join(f"{x:.0f}" for x in per) + f" | {allp:.0f} |")
    return body


def labelled_counts(cfg: dict, num_classes: int) -> list[int] | None:
    """A long-tailed run's labelled count per class, from its config (None for a split that is not long-tailed)."""
    from semisup.data.splits import long_tail_counts

    d = cfg["data"]
    return long_tail_counts(d["n1"], d["gamma_l"], num_classes) if d.get("split") in ("long_tail", "ratio") else None


def weight_table(done: dict, history: dict, methods: list[str], seeds: list[int]) -> list[str]:
    """How much of each FixMatch-family term a class-weighted loss (BCE, ARL: w_y = alpha_y / mean alpha, from
    the labelled counts as FixMatch's ClassWeights) keeps: the mean w_y of the pseudo-labels that passed the
    mask (counted by pseudo-label at every evaluation: ``history[(method, seed)]``, the run's metrics lines),
    over the whole run and over its last evaluation window; the share of those pseudo-labels in the head and
    tail classes; and the labelled term's mean w_y (its images drawn uniformly: sum N_k w_k / sum N_k). CE: 1."""
    from semisup.losses import class_weights
    from semisup.metrics import group_sizes

    rows = []
    for m in methods:
        cfgs = [done[(m, s)][2] for s in seeds]
        lines = [[r for r in history[(m, s)] if r.get("train", {}).get("per_class_passed")] for s in seeds]
        if "loss_u" not in cfgs[0]["algorithm"] or not all(lines):
            continue
        k = len(lines[0][0]["train"]["per_class_passed"])
        head, _, tail = group_sizes(k)
        whole, last, heads, tails, lab = [], [], [], [], []
        for cfg, ls in zip(cfgs, lines):
            counts = labelled_counts(cfg, k)
            if counts is None:
                return []
            w = class_weights(counts, cfg["algorithm"]["arl_alpha"])[1].tolist()
            wu, wx = [w if cfg["algorithm"][t] in ("bce", "arl") else [1.0] * k for t in ("loss_u", "loss_x")]
            total = [sum(r["train"]["per_class_passed"][c] for r in ls) for c in range(k)]
            final = ls[-1]["train"]["per_class_passed"]
            whole.append(sum(t * x for t, x in zip(total, wu)) / max(sum(total), 1))
            last.append(sum(t * x for t, x in zip(final, wu)) / max(sum(final), 1))
            heads.append(100 * sum(total[:head]) / max(sum(total), 1))
            tails.append(100 * sum(total[k - tail:]) / max(sum(total), 1))
            lab.append(sum(c * x for c, x in zip(counts, wx)) / sum(counts))
        rows.append(f"| {m} | {fmt(whole, 3)} | {fmt(last, 3)} | {fmt(heads, 1)} | {fmt(tails, 2)} | {fmt(lab, 3)} |")
    if not rows:
        return []
    return ["\nThe class weight w_y = alpha_y / mean(alpha) of BCE and ARL (1 for CE): its mean over the "
            "pseudo-labels that passed the mask (by pseudo-label; over all of a run's evaluation windows, and over "
            "the last one), the share of those pseudo-labels in the head and tail classes, and the labelled term's "
            "mean w_y (mean over seeds). ARL multiplies w_y by (1 - p_y)^(p_y + alpha_y) < 1 on top.\n",
            "| method | unlabelled w_y: whole run | last window | head % of passed | tail % of passed | "
            "labelled w_y |", "|---|---|---|---|---|---|", *rows]


def daso_tables(done: dict, methods: list[str], seeds: list[int], every: int) -> list[str]:
    """DASO's two classifiers (on FixMatch and on ReMixMatch): per-class recall of their pseudo-labels."""
    body = []
    for m in methods:
        lin = [done[(m, s)][1]["train"].get("pseudo_label_linear", {}).get("per_class_pl_recall") for s in seeds]
        sim = [done[(m, s)][1]["train"].get("pseudo_label_sim", {}).get("per_class_pl_recall") for s in seeds]
        if all(lin) and all(sim):
            k = len(lin[0])
            body += [f"\n{m}: per-class recall of the pseudo-labels of its linear classifier (argmax p) and its "
                     f"similarity classifier (argmax q) on the unlabelled images, over the last {every} "
                     f"steps, against their hidden labels (mean over seeds; class 0 is the head).\n",
                     "| classifier | " + " | ".join(f"c{c}" for c in range(k)) + " | mean |",
                     "|---|" + "---|" * (k + 1)]
            for name, v in (("linear", lin), ("similarity", sim)):
                per = [statistics.mean(x[c] for x in v) * 100 for c in range(k)]
                body.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in per) + f" | {statistics.mean(per):.1f} |")
    return body


def paper_table(done: dict, methods: list[str], seeds: list[int], cfg: dict) -> list[str]:
    """The ARL paper's figures beside ours, for its protocol (CIFAR-10-LT, beta 20 %, N1 1000, a gamma it ran)
    and its columns: top-1, APR, LER, and each column's rank by top-1 in both."""
    d = cfg["data"]
    paper = PAPER_TOP1.get(d.get("gamma_l"), {})
    cols = [m for m in methods if m in paper]
    if d.get("split") != "ratio" or d.get("n1") != 1000 or d.get("label_ratio") != 20 or len(cols) < 2:
        return []
    ours = {m: statistics.mean(done[(m, s)][0]["final"]["test_top1"] * 100 for s in seeds) for m in cols}
    rank = {name: {m: i + 1 for i, m in enumerate(sorted(cols, key=lambda m: v[m]))} for name, v in
            (("paper", paper), ("ours", ours))}
    g = d["gamma_l"]
    body = [f"\nThe ARL paper's figures at gamma {g:g} (2^20 steps, mu 7) beside these runs'; "
            "rank 1 = lowest top-1. APR as a fraction (the paper's form).\n",
            "| loss | paper top-1 | ours | paper APR | ours | paper LER | ours | rank: paper | ours |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m in cols:
        rows = [done[(m, s)][0] for s in seeds]
        apr = [r["apr"]["mean"] for r in rows if r.get("apr")]
        ler = [r["ler"] for r in rows if r.get("ler") is not None]
        p_apr = f"{PAPER_APR[m][0]:.2f} ± {PAPER_APR[m][1]:.2f}" if g == 100 else "–"
        p_ler = f"{PAPER_LER[m]:.3g}" if g == 100 else "–"
        body.append(f"| {m} | {paper[m]:.2f} | {fmt([r['final']['test_top1'] * 100 for r in rows])} | {p_apr} | "
                    f"{fmt(apr)} | {p_ler} | {fmt(ler, 3)} | {rank['paper'][m]} | {rank['ours'][m]} |")
    order = {name: " < ".join(sorted(cols, key=lambda m: v[m])) for name, v in (("paper", paper), ("ours", ours))}
    body.append(f"\nOrder by top-1, paper: {order['paper']}; ours: {order['ours']}.")
    return body


if __name__ == "__main__":
    main()
