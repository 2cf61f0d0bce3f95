"""SimCLR on Fashion-MNIST: pretraining, then linear evaluation, fine-tuning and FixMatch from the encoder.

All through the `semisup` CLI (the commands in RESULTS.md are what ran), one seed, CPU budget; each run resumes
from its own run folder (skipped when its summary.json exists: the downstream runs need the encoder checkpoint,
which no log keeps):

1. `semisup pretrain --method simclr --preset simclr_fashion_mnist` for --pretrain-steps steps (all 60k
   train images, labels unused); its NT-Xent loss and alignment / uniformity per evaluation;
2. linear evaluation (frozen encoder, linear head, same head training) of the SimCLR encoder vs a
   randomly initialised one (same architecture and seed; its batch-norm statistics estimated on train
   images, since a frozen encoder runs its BN in eval mode), with 40 and 250 labels;
3. fine-tuning (everything trains, `supervised --model.init_from`) vs supervised from scratch, 40 and 250;
4. FixMatch from the SimCLR encoder vs from scratch, 40 labels, equal steps.

    python benchmarks/sweeps/simclr.py --pretrain-steps 2500 --steps 2000 --fixmatch-steps 800 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # sweep.py; results.py
import results  # noqa: E402
from sweep import beside  # noqa: E402


def sh(argv: list[str], out: Path, log: Path) -> dict:
    """Run one semisup command (skipped when its summary.json already exists); its summary."""
    if not (out / "summary.json").exists():
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            subprocess.run([sys.executable, "-m", "semisup", *argv[1:]], check=True, stdout=f,
                           stderr=subprocess.STDOUT)
    return json.loads((out / "summary.json").read_text())


def random_encoder(pre_cfg: Path, path: Path, seed: int, images: int = 2048) -> None:
    """encoder.pt of the untrained network: the loop's initialisation for ``seed``, BN running statistics
    set to the cumulative average over ``images`` train images (plain flip/crop views)."""
    import yaml

    from semisup import checkpoint
    from semisup import config as C
    from semisup.data.dataset import load_dataset
    from semisup.data.transforms import to_float
    from semisup.models import build_model

    saved = yaml.safe_load(pre_cfg.read_text())
    cfg = C.from_dict({"data": saved["data"], "model": saved["model"]})
    ds = load_dataset(cfg.data)
    torch.manual_seed(seed)
    model = build_model(cfg.model, ds.num_classes, ds.channels, ds.image_size)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    x = torch.from_numpy(ds.train_x[torch.randperm(len(ds.train_x))[:images].numpy()])
    with torch.no_grad():
        for i in range(0, len(x), 256):
            model(to_float(x[i:i + 256], ds.mean, ds.std))
    enc = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    checkpoint.save({"model": enc, "config": {"model": saved["model"], "data": saved["data"]}, "step": 0,
                     "meta": {}}, path, keep_previous=False)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrain-steps", type=int, default=2500)
    p.add_argument("--steps", type=int, default=2000, help="linear-eval and fine-tuning steps")
    p.add_argument("--fixmatch-steps", type=int, default=800)
    p.add_argument("--fixmatch-mu", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="downstream runs side by side (1 thread each if > 1)")
    p.add_argument("--out", default="runs/bench_simclr")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    common = [f"--run.seed={a.seed}", "--overwrite", "--run.progress=false"]
    threads = ["--run.threads=1"] if a.jobs > 1 else []
    pre = out / "pretrain"
    pre_cmd = ["semisup", "pretrain", "--method", "simclr", "--preset", "simclr_fashion_mnist",
               f"--train.steps={a.pretrain_steps}", f"--run.out={pre}", *common]
    print("+", " ".join(pre_cmd), flush=True)
    pre_sum = sh(pre_cmd, pre, out / "pretrain.log")
    enc = pre / "encoder.pt"
    rnd = out / "random_encoder.pt"
    if not rnd.exists():
        random_encoder(pre / "config.yaml", rnd, a.seed)

    jobs = {}  # key -> argv, out
    for n in (40, 250):
        lpc = [f"--data.labels_per_class={n // 10}"]
        for name, e in (("simclr", enc), ("random", rnd)):
            o = out / f"linear_{name}_{n}"
            jobs[("linear", name, n)] = (["semisup", "linear-eval", "--encoder", str(e), *lpc,
                                          f"--train.steps={a.steps}", f"--run.out={o}", *common, *threads], o)
        for name, init in (("simclr", [f"--model.init_from={enc}"]), ("scratch", [])):
            o = out / f"finetune_{name}_{n}"
            jobs[("finetune", name, n)] = (["semisup", "train", "--preset", "fashion_mnist_40",
                                            "--algorithm.name=supervised", *lpc, *init, f"--train.steps={a.steps}",
                                            f"--run.out={o}", *common, *threads], o)
    for name, init in (("simclr", [f"--model.init_from={enc}"]), ("scratch", [])):
        o = out / f"fixmatch_{name}_40"
        jobs[("fixmatch", name, 40)] = (["semisup", "train", "--preset", "fashion_mnist_40",
                                         "--algorithm.name=fixmatch", *init, f"--train.steps={a.fixmatch_steps}",
                                         f"--train.mu={a.fixmatch_mu}", f"--run.out={o}", *common, *threads], o)

    def go(key):
        argv, o = jobs[key]
        print("+", " ".join(argv), flush=True)
        s = sh(argv, o, beside(o, ".log"))
        print(f"  {key}: final {s['final']['test_top1']:.4f}", flush=True)
        return key, s

    order = sorted(jobs, key=lambda k: k[0] != "fixmatch")  # the long runs first
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        res = dict(pool.map(go, order))

    recs = records(pre)
    first, last = recs[0], recs[-1]
    top = lambda k: f"{res[k]['final']['test_top1'] * 100:.2f}"  # noqa: E731
    body = [f"Fashion-MNIST, smallcnn, seed {a.seed}, one run per cell (a CPU budget: no seed spread yet). "
            f"Pretraining: {a.pretrain_steps} steps of 32 labelled + 224 unlabelled images (512 views), all 60k "
            f"train images, crop + flip views (1-channel: no colour distortion), NT-Xent at temperature 0.5, SGD "
            f"0.125 with warm-up and cosine to 0: {pre_sum['train_seconds'] / 60:.1f} min at "
            f"{pre_sum['images_per_s']:.0f} views/s. Downstream runs use the fashion_mnist_40 split seeded "
            f"{a.seed} (4 or 25 labels per class), {a.steps} steps at B 64 for linear evaluation and fine-tuning "
            f"(FixMatch's SGD 0.03 schedule; linear evaluation: cosine to 0, no EMA), FixMatch {a.fixmatch_steps} "
            f"steps at mu {a.fixmatch_mu}. Test top-1 on the 10,000 test images, the model after the last step "
            f"(EMA where the run has one).\n",
            "| pretraining | step | NT-Xent loss | alignment (lower: views closer) | uniformity (lower: spread) |",
            "|---|---|---|---|---|"]
    for r in (first, *[r for r in recs[1:-1] if r["step"] % max(1, a.pretrain_steps // 5) == 0], last):
        body.append(f"| | {r['step']} | {r['train']['loss']:.3f} | {r['test']['alignment']:.3f} | "
                    f"{r['test']['uniformity']:.3f} |")
    body += ["\n| protocol | labels | from SimCLR | baseline | baseline is | difference (points) |",
             "|---|---|---|---|---|---|"]
    for kind, base, what in (("linear", "random", "random encoder, same head training"),
                             ("finetune", "scratch", "supervised from scratch"),
                             ("fixmatch", "scratch", "FixMatch from scratch")):
        for n in (40, 250):
            if (kind, "simclr", n) in res:
                d = (res[(kind, "simclr", n)]["final"]["test_top1"] - res[(kind, base, n)]["final"]["test_top1"]) * 100
                body.append(f"| {kind} | {n} | {top((kind, 'simclr', n))} | {top((kind, base, n))} | {what} "
                            f"| {d:+.2f} |")
    body.append("\nCommands:\n\n" + "\n".join(f"    {' '.join(shlex.quote(x) for x in c)}"
                                              for c in [pre_cmd, *[jobs[k][0] for k in order]]))
    title = "SimCLR pretraining on Fashion-MNIST: linear evaluation, fine-tuning, FixMatch from the encoder"
    results.publish(title, "\n".join(body), write=not a.no_write)


if __name__ == "__main__":
    main()
