"""Training-step images/s of the real loop, fp32 vs bf16 autocast, channels_last on/off, torch.compile,
the fused CPU batch norm + activation kernel (run.fused_bn) on/off.

Runs `semisup.train` for a few steps per setting (evaluation only at the end) and reads the loop's
own median step time. Example (CIFAR-10 JPEG folder, WRN-28-2, FixMatch, 4000 labels):

    python benchmarks/micro/bench_step.py --steps 6 -- --preset=cifar10_4000_wrn --data.name=folder \
        --data.root=/tmp/cifar10-jpeg
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # results.py in benchmarks/
import results  # noqa: E402

from semisup import config as C  # noqa: E402
from semisup.models import fused  # noqa: E402
from semisup.train import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="steps per setting (median step time is reported)")
    p.add_argument("--settings", default="off:false,off:true,bf16:false,bf16:true",
                   help="comma-separated amp:channels_last[:compile[:fused_bn]] settings (compile false and "
                        "fused_bn auto when left out)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write RESULTS.md")
    p.add_argument("overrides", nargs="*", help="semisup config: --preset=NAME and --section.key=value")
    a = p.parse_args()
    preset, ov = results.split_preset(a.overrides)
    rows = []
    for setting in a.settings.split(","):
        parts = setting.split(":")
        amp, cl, comp, fb = parts + ["", "", "false", "auto"][len(parts):]  # compile, fused_bn: optional
        with tempfile.TemporaryDirectory() as tmp:
            cfg = C.resolve(preset, overrides=[*ov, f"--train.steps={a.steps}", f"--train.eval_every={a.steps}",
                                               f"--run.amp={amp}", f"--run.channels_last={cl}",
                                               f"--run.compile={comp}", f"--run.fused_bn={fb}",
                                               "--run.progress=false", "--run.tensorboard=false",
                                               f"--run.out={tmp}/run"])
            res = train(cfg)
        r = res.final
        ips = r["step_images"] / r["step_seconds_median"]
        # what the run's runtime decided (auto -> on or off); the kernel only applies to channels_last tensors
        fb = ("on" if cl == "true" else "n/a (NCHW)") if fused.enabled() else "off"
        rows.append((amp, cl, comp, fb, r["step_seconds_median"], ips, r["test"]["top1"],
                     1 - r["data_seconds_median"] / r["step_seconds_median"]))
        print(f"amp={amp} channels_last={cl} compile={comp} fused_bn={fb}: {r['step_seconds_median']:.3f} s/step, "
              f"{ips:.1f} images/s", flush=True)
    base = rows[0][5]
    body = [f"{cfg.algorithm.name}, model {cfg.model.name}, data {cfg.data.name}, batch {cfg.train.batch_size} "
            f"+ {cfg.train.mu}x{cfg.train.batch_size} unlabelled ({r['step_images']} images/step), "
            f"median of {a.steps} steps per setting.\n",
            "| autocast | channels_last | compile | fused BN + act | s/step (median) | images/s | vs first row | share "
            "of the step outside the data pipeline | test top-1 after the run |",
            "|---|---|---|---|---|---|---|---|---|"]
    for amp, cl, comp, fb, sec, ips, top1, share in rows:
        body.append(f"| {amp} | {cl} | {comp} | {fb} | {sec:.3f} | {ips:.1f} | {ips / base:.2f}x | {share:.1%} "
                    f"| {top1:.4f} |")
    text = "\n".join(body)
    results.publish(f"Training step speed: {cfg.algorithm.name} / {cfg.model.name} / {cfg.data.name}", text,
                    write=not a.no_write)


if __name__ == "__main__":
    main()
