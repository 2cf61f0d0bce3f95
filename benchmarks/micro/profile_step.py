"""Where a training step's time goes, per algorithm: images/s of the real loop and the profiler's breakdown.

For each algorithm, three measurements on the same config:
  1. a timed run of the real loop (`semisup.train`, --steps steps): the loop's median step time;
  2. the same run under torch.profiler, its time summed by the loop's own regions (`semisup.data`: sampling
     and augmentation; `semisup.forward`: the algorithm's forward passes and losses; `semisup.backward`:
     backward, gradient all-reduce and, inside it, `semisup.optimizer`; `semisup.ema`); the rest of the step
     is bookkeeping (pseudo-label trackers, loss sums, BN-momentum and lr updates);
  3. the bare model: forward + cross-entropy + backward over as many images as the step feeds the model, no
     data pipeline, no algorithm, no optimizer (median of --steps after 2 warm-ups).
"model share" = (forward + backward - optimizer) / step from 2 (the profiler inflates small ops, so this
is a lower bound), and bare / step from 1 and 3.

    python benchmarks/micro/profile_step.py --steps 8 -- --preset=fashion_mnist_40
    python benchmarks/micro/profile_step.py --steps 4 --algorithms fixmatch -- --preset=cifar10_4000_wrn \
        --data.name=folder --data.root=/tmp/cifar10-jpeg
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py in benchmarks/
import results  # noqa: E402

from semisup import config as C  # noqa: E402
from semisup.data.dataset import load_dataset  # noqa: E402
from semisup.models import build_model, fused  # noqa: E402
from semisup.runtime import Runtime  # noqa: E402
from semisup.train import train  # noqa: E402

ALGORITHMS = "supervised,pseudo_label,pi_model,mean_teacher,mixmatch,remixmatch,fixmatch,daso,abc,acr"
PER_ALG = {"remixmatch": ["--data.strong=ctaugment", "--algorithm.K=2"]}  # as in the Fashion-MNIST table
REGIONS = ("semisup.data", "semisup.forward", "semisup.backward", "semisup.optimizer", "semisup.ema")


def _cfg(preset, overrides, steps, tmp):
    return C.resolve(preset, overrides=[*overrides, f"--train.steps={steps}", f"--train.eval_every={steps}",
                                        "--run.progress=false", "--run.tensorboard=false", f"--run.out={tmp}"])


def _bare_model(cfg, images: int, steps: int) -> tuple[float, float]:
    """(median seconds of forward + CE + backward of the run's model over ``images`` random inputs,
    FLOPs of that forward + backward per image, counted by torch's FlopCounterMode)."""
    ds = load_dataset(cfg.data)
    c, h, _w = ds.train_x.shape[1:]
    if cfg.data.image_size:
        h = cfg.data.image_size
    rt = Runtime(cfg.run)
    model = rt.prepare_model(build_model(cfg.model, len(ds.classes), c, h)).train()
    k = len(ds.classes)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(model(torch.randn(8, c, h, h)).logits, torch.randint(0, k, (8,))).backward()
    model.zero_grad(set_to_none=True)
    x = rt.to_input(torch.randn(images, c, h, h))
    y = torch.randint(0, k, (images,))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with rt.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).logits.float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times), fc.get_total_flops() / 8


def matmul_gflops(dtype, n: int = 2048, reps: int = 10) -> float:
    """Median GFLOP/s of an n x n x n matrix product in ``dtype`` on this process's threads: the ceiling a
    convolution (lowered to such products) can approach."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _top_ops(events, t0: float, t1: float, n: int = 4) -> tuple[list[tuple[str, float]], float]:
    """The n ops with the most self time among those that start inside the training steps [t0, t1) (seconds;
    the evaluation after the last step is left out), and the total self time of all of them. Ops are aten
    operators and autograd Functions such as the fused batch-norm kernel's (_BNAct, _BNActBackward); the
    loop's own regions and autograd's bookkeeping events are not ops."""
    skip = ("semisup.", "autograd::", "Optimizer.", "ProfilerStep")
    self_time: dict[str, float] = {}
    for ev in events:
        if ev.name.startswith(skip) or not t0 <= ev.time_range.start / 1e6 < t1:
            continue
        name = ev.name.removeprefix("aten::")
        self_time[name] = self_time.get(name, 0.0) + ev.self_cpu_time_total
    total = max(1.0, sum(self_time.values()))
    return sorted(self_time.items(), key=lambda kv: kv[1], reverse=True)[:n], total


def measure(alg: str, preset, overrides, steps: int) -> dict:
    ov = [*overrides, f"--algorithm.name={alg}", *PER_ALG.get(alg, [])]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(preset, ov, steps, f"{tmp}/timed")
        r = train(cfg).final
        step_s, images = r["step_seconds_median"], r["step_images"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train(_cfg(preset, ov, steps, f"{tmp}/profiled"))
    # medians over the steps of each region's duration, and of the step itself (from one step's data
    # region to the next one's: includes the bookkeeping; the last step, followed by the evaluation, is left out)
    spans = {k: [] for k in REGIONS}
    starts = []
    for ev in prof.events():
        if ev.name in spans:
            spans[ev.name].append(ev.time_range.elapsed_us() / 1e6)
            if ev.name == "semisup.data":
                starts.append(ev.time_range.start / 1e6)
    per_step = {k: statistics.median(v) if v else 0.0 for k, v in spans.items()}
    starts.sort()
    prof_step = statistics.median([b - a for a, b in zip(starts, starts[1:])])
    top, ops_total = _top_ops(prof.events(), starts[0], starts[-1])
    bare, flops = _bare_model(cfg, images, steps)
    model_s = per_step["semisup.forward"] + per_step["semisup.backward"] - per_step["semisup.optimizer"]
    dtype = Runtime(cfg.run).amp_dtype
    precision = str(dtype).replace("torch.", "") if dtype else "fp32"
    return {"alg": alg, "model": cfg.model.name, "amp": f"{cfg.run.amp} ({precision})", "step_s": step_s,
            "images": images, "ips": images / step_s, "prof": per_step, "prof_step": prof_step,
            "model_share": model_s / prof_step,
            "bare_s": bare, "bare_share": bare / step_s, "gflops": flops * images / step_s / 1e9,
            "top": ", ".join(f"{name} {t / ops_total:.0%}" for name, t in top)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--algorithms", default=ALGORITHMS)
    p.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    p.add_argument("overrides", nargs="*", help="semisup config: --preset=NAME and --section.key=value")
    a = p.parse_args()
    preset, ov = results.split_preset(a.overrides)
    rows = []
    for alg in a.algorithms.split(","):
        m = measure(alg, preset, ov, a.steps)
        rows.append(m)
        print(f"{alg}: {m['step_s']:.3f} s/step, {m['ips']:.0f} images/s, model share {m['model_share']:.0%} "
              f"(profiler) / {m['bare_share']:.0%} (bare model)", flush=True)
    r0 = rows[0]
    peak = (f"Matrix-product ceiling on these threads (2048^3, median of 10): fp32 {matmul_gflops(torch.float32):.0f} "
            f"GFLOP/s, bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s.\n")
    body = [peak,f"Model {r0['model']}, run.amp={r0['amp']}, {a.steps} steps per run; batch 64 labelled + mu x 64 "
            "unlabelled as the preset says. `images` = images the step feeds the model (all views). Region "
            "columns: share of the profiled step (data = sampling + augmentation, forward = the algorithm's "
            "forward passes and losses, backward = backward without the optimizer, opt = optimizer step, "
            "ema = EMA update, other = the rest of the step: bookkeeping); medians over the steps. "
            "`model share` = (forward + backward) / profiled step; `bare model / step` = "
            "a bare forward + backward of the model over the same images / the timed step (no profiler); "
            "`model GFLOP/s in the step` = the model's forward + backward FLOPs (FlopCounterMode) for the "
            "step's images / the timed step (counting a backward for every image: an over-count for no-grad "
            "passes such as Mean Teacher's teacher). `top ops` = share of the ops' self time during the "
            "profiled steps (not the evaluation after them), aten operators and autograd Functions such as the "
            "fused batch norm + activation (_BNAct forward, _BNActBackward).\n",
            "| algorithm | images | s/step | images/s | data | forward | backward | opt | ema | other | model share "
            "| bare model / step | model GFLOP/s in the step | top ops (self time, training steps only) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        pr, tot = m["prof"], m["prof_step"]
        share = {k: pr[k] / tot for k in REGIONS}
        back = (pr["semisup.backward"] - pr["semisup.optimizer"]) / tot
        other = 1 - sum(share[k] for k in REGIONS if k != "semisup.optimizer")
        body.append(f"| {m['alg']} | {m['images']} | {m['step_s']:.3f} | {m['ips']:.0f} | {share['semisup.data']:.1%} "
                    f"| {share['semisup.forward']:.1%} | {back:.1%} | {share['semisup.optimizer']:.1%} "
                    f"| {share['semisup.ema']:.1%} | {other:.1%} | {m['model_share']:.1%} | {m['bare_share']:.1%} "
                    f"| {m['gflops']:.0f} | {m['top']} |")
    unfused = "" if fused.enabled() else ", run.fused_bn=off"  # what the runs' runtime decided
    results.publish(f"Where the step's time goes: {r0['model']}, run.amp={r0['amp']}{unfused}", "\n".join(body),
                    write=not a.no_write)


if __name__ == "__main__":
    main()
