"""Does a change of code keep every result? Short deterministic runs, compared byte for byte.

A refactoring must not change what any run computes. This script trains a set of short runs on
scikit-learn's digits (every algorithm; ReMixMatch with CTAugment; FixMatch with non-finite steps
skipped; a 2-rank gloo job) with the code of a reference commit and with the working tree, and
compares, run by run, metrics.jsonl (every line, every value, byte for byte once the four wall-clock
fields are removed: train_seconds, images_per_s, step_seconds_median, data_seconds_median) and the
weights, EMA weights and algorithm state of last.pt (a hash of every tensor's bytes).

    python benchmarks/same_metrics.py --ref HEAD          # the working tree against the last commit
    python benchmarks/same_metrics.py --ref a95807d --keep /tmp/golden

Both sides run on this machine, one thread each, so the comparison does not depend on the CPU (bf16
kernels differ between CPUs; two runs on one CPU do not). Exit status 0 when every run is identical,
1 otherwise (the differing runs and first differing line are printed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("train_seconds", "images_per_s", "step_seconds_median", "data_seconds_median")
ALGORITHMS = ("supervised", "pseudo_label", "pi_model", "mean_teacher", "mixmatch", "remixmatch", "fixmatch",
              "daso", "daso_remixmatch", "abc", "acr", "simclr")
NAN_STEPS = (2, 5)  # the "skip" run: the model's training forward returns NaN logits at these steps


def base_args(out: Path, steps: int = 8) -> list[str]:
    ov = {"data.name": "digits", "data.labels_per_class": 4, "model.name": "smallcnn", "model.width": 1,
          "train.steps": steps, "train.eval_every": 4, "train.batch_size": 16, "train.mu": 2,
          "run.progress": "false", "run.tensorboard": "false", "run.out": out, "run.threads": 1}
    return [f"--{k}={v}" for k, v in ov.items()]


def cases(out: Path) -> dict[str, list[str]]:
    """name -> the command (argv after the Python executable) that writes ``out/name``."""
    m = [sys.executable, "-m", "semisup", "train"]
    runs = {a: [*m, *base_args(out / a), f"--algorithm.name={a}"] for a in ALGORITHMS}
    runs["remixmatch_ctaugment"] = [*m, *base_args(out / "remixmatch_ctaugment"), "--algorithm.name=remixmatch",
                                    "--data.strong=ctaugment"]
    runs["fixmatch_randaugment_mc"] = [*m, *base_args(out / "fixmatch_randaugment_mc"), "--data.strong=randaugment_mc",
                                       "--algorithm.loss_u=arl", "--algorithm.loss_x=arl"]
    skip = out / "fixmatch_nonfinite_skip"
    runs["fixmatch_nonfinite_skip"] = [sys.executable, __file__, "--child-nan", *base_args(skip),
                                       "--train.nonfinite=skip"]
    runs["fixmatch_2ranks"] = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "semisup", "train", *base_args(out / "fixmatch_2ranks")]
    return runs


def child_nan(argv: list[str]) -> int:
    """`semisup train ARGV` with the model's training forward returning NaN logits at NAN_STEPS (counted in
    training-mode forward passes: FixMatch makes one per step)."""
    from semisup import models
    from semisup.cli import main

    real, calls = models.Classifier.forward, [0]

    def forward(self, x):
        out = real(self, x)
        if self.training:
            calls[0] += 1
            if calls[0] - 1 in NAN_STEPS:
                out = type(out)(out.logits * float("nan"), *out[1:])
        return out

    models.Classifier.forward = forward
    return main(["train", *argv])


def run_all(code: Path, out: Path, only: list[str] | None) -> dict[str, str]:
    """Run every case with the semisup package found in ``code``; returns name -> "" or the error's tail."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", SEMISUP_ALLOCATOR="system")
    failed = {}
    for name, argv in cases(out).items():
        if only and name not in only:
            continue
        print(f"  {code.name or code}: {name}", file=sys.stderr, flush=True)
        p = subprocess.run(argv, cwd=code, env=env, capture_output=True, text=True, timeout=900)
        failed[name] = "" if p.returncode == 0 else f"exit {p.returncode}: {p.stderr[-1500:]}"
    return failed


def metrics_lines(run: Path) -> list[str]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k in WALL_CLOCK:
            rec.pop(k, None)
        out.append(json.dumps(rec))
    return out


def state_hashes(run: Path) -> dict[str, str]:
    import torch

    ck = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    out = {}
    for part in ("model", "ema", "alg_state", "cta", "optimizer"):
        h = hashlib.sha1()
        for t in _tensors(ck.get(part)):
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        out[part] = h.hexdigest()
    return out


def _tensors(x):
    import torch

    if torch.is_tensor(x):
        yield x
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            yield from _tensors(x[k])
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def compare(a: Path, b: Path, names: list[str]) -> list[str]:
    problems = []
    for n in names:
        la, lb = metrics_lines(a / n), metrics_lines(b / n)
        if la != lb:
            i = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
            problems.append(f"{n}: metrics.jsonl differs at line {i + 1}:\n    ref  {la[i] if i < len(la) else '-'}\n"
                            f"    new  {lb[i] if i < len(lb) else '-'}")
        ha, hb = state_hashes(a / n), state_hashes(b / n)
        diff = [k for k in ha if ha[k] != hb[k]]
        if diff:
            problems.append(f"{n}: last.pt differs in {', '.join(diff)}")
    return problems


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--child-nan"]:
        return child_nan(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", default="HEAD", help="the commit whose code gives the reference runs")
    ap.add_argument("--keep", type=Path, help="keep both sets of runs here (else a temporary directory)")
    ap.add_argument("--only", nargs="*", help="run only these cases")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="semisup-same-"))
    ref_code = work / "ref_code"
    shutil.rmtree(ref_code, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(ref_code), args.ref], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        for d in ("ref", "new"):
            shutil.rmtree(work / d, ignore_errors=True)
        print(f"reference: {args.ref}", file=sys.stderr)
        fa = run_all(ref_code, work / "ref", args.only)
        print("working tree", file=sys.stderr)
        fb = run_all(ROOT, work / "new", args.only)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ref_code)], cwd=ROOT, capture_output=True)
    bad = [f"{n}: the reference run failed ({e})" for n, e in fa.items() if e]
    bad += [f"{n}: the new run failed ({e})" for n, e in fb.items() if e]
    ok = [n for n in fa if not fa[n] and not fb.get(n)]
    bad += compare(work / "ref", work / "new", ok)
    for line in bad:
        print(line)
    print(f"{len(ok) - len({b.split(':')[0] for b in bad if b.split(':')[0] in ok})} of {len(fa)} runs identical "
          f"(metrics.jsonl without {', '.join(WALL_CLOCK)}; last.pt tensors); runs in {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
