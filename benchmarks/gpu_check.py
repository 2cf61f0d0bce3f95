"""The GPU check, in one call of under 10 minutes (benchmarks/gpu_check.sh is the entry point):

1. the test suite's CUDA paths (`pytest -m cuda`);
2. FixMatch WRN-28-2 training images/s on CIFAR-10 (4000 labels, B 64, mu 7): semisup fp32, bf16 +
   channels_last, and the same with torch.compile; USB 0.3.2 on the same GPU, the same labelled images,
   fp32 and its own amp (fp16) option;
3. the CIFAR-10-4000 preset trained for a fixed number of minutes (the schedule sized to the minutes
   from the measured bf16 rate), test top-1 against wall-clock time.

Every figure goes to OUT/gpu_check.md (a RESULTS.md section naming the GPU) and OUT/gpu_check.json;
``--results FILE`` writes the section into FILE, replacing the one of the same GPU (see results.py).
Each stage has its own time limit and a failing stage is reported in the table, never stops the others.
``--dry`` runs every stage on the CPU at toy sizes to show the script works on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ("semilearn==0.3.2", "ruamel.yaml>=0.17.21,<0.18", "progress>=1.6")  # USB and what it imports


def sh(argv, timeout, env=None, log=None) -> tuple[int, str, float]:
    """Run argv; (returncode, the last 3000 characters of its output, seconds). 124 on timeout."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env, timeout=timeout, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = 124, (e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")) + "\n[timed out]"
    dt = time.perf_counter() - t0
    if log is not None:
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(map(str, argv))}  (rc {rc}, {dt:.1f} s)\n{out[-20000:]}\n")
    return rc, out[-3000:], dt


def find_folder(data: Path, work: Path) -> Path:
    """A folder with train/ and test/ (the CIFAR-10 JPEG folder), unpacking a .tar.gz into ``work``."""
    if data.is_file():
        dest = work / "data"
        if not dest.exists():
            with tarfile.open(data) as t:
                t.extractall(dest, filter="data")
        data = dest
    for d in [data, *sorted(p for p in data.rglob("*") if p.is_dir())]:
        if (d / "train").is_dir() and (d / "test").is_dir():
            return d
    raise SystemExit(f"gpu_check: no train/ and test/ under {data}")


def usb_python(args, work: Path, log: Path) -> tuple[list[str] | None, dict, str]:
    """The interpreter and environment that import semilearn, or None and why."""
    env = dict(os.environ)
    if args.usb_python:
        return [args.usb_python], env, ""
    site = work / "usb-site"
    if args.wheels:
        rc, out, _ = sh([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                         str(site), *map(str, sorted(Path(args.wheels).glob("*.whl")))], 300, log=log)
    else:  # a machine that reaches PyPI
        rc, out, _ = sh([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                         *WHEELS], 300, log=log)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    rc2, out2, _ = sh([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
                       "import usb_cifar; usb_cifar.stand_in_modules(); import semilearn"], 120, env, log)
    if rc2:
        return None, env, (out2.strip().splitlines() or ["import failed"])[-1][:160]
    return [sys.executable], env, ""


def semisup_rate(args, folder: Path, work: Path, name: str, steps: int, extra: list[str], env, log) -> dict:
    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "semisup", "train", "--preset", "cifar10_4000_wrn", "--data.name=folder",
            f"--data.root={folder}", f"--train.steps={steps}", f"--train.eval_every={steps}",
            f"--run.out={out}", "--run.progress=false", "--run.tensorboard=false", f"--run.device={args.device}",
            *extra]
    rc, tail, dt = sh(argv, args.stage_timeout, env, log)
    row = {"trainer": "semisup", "setting": name, "rc": rc, "wall_s": round(dt, 1)}
    if rc == 0:
        rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        row.update(steps=rec["step"], step_s_median=round(rec["step_seconds_median"], 4),
                   img_s=round(rec["step_images"] / rec["step_seconds_median"], 1))
    else:
        row["error"] = (tail.strip().splitlines() or ["?"])[-1][:160]
    return row


def usb_rate(args, folder: Path, work: Path, py, env, split: Path, iters: int, amp: bool, log) -> dict:
    row = {"trainer": "usb 0.3.2", "setting": "amp (fp16)" if amp else "fp32"}
    if py is None:
        return {**row, "rc": None, "error": env}
    js = work / f"usb_{int(amp)}.json"
    workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    argv = [*py, str(ROOT / "benchmarks" / "usb_cifar.py"), "--data", str(folder), "--labelled", str(split),
            "--iters", str(iters), "--no-eval", "--json", str(js), "--num-workers", str(workers),
            "--device", args.device, "--save-dir", str(work / "usb_runs"), *(["--amp"] if amp else [])]
    rc, tail, dt = sh(argv, args.stage_timeout, env, log)
    row.update(rc=rc, wall_s=round(dt, 1))
    if rc == 0:
        r = json.loads(js.read_text())
        row.update(steps=r["iters"], img_s=r["steady_img_s"], num_workers=workers)
    else:
        row["error"] = (tail.strip().splitlines() or ["?"])[-1][:160]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="the CIFAR-10 JPEG folder or its .tar.gz")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    p.add_argument("--minutes", type=float, default=3.0, help="training time of the CIFAR-10-4000 preset")
    p.add_argument("--rate-steps", type=int, default=60, help="steps per images/s measurement")
    p.add_argument("--wheels", default=None, help="folder of semilearn's wheels (a machine without PyPI)")
    p.add_argument("--usb-python", default=None, help="an interpreter that already imports semilearn")
    p.add_argument("--stage-timeout", type=float, default=150.0, help="seconds for each measurement")
    p.add_argument("--results", type=Path, default=None, help="write (replace) the GPU's section of this RESULTS.md")
    p.add_argument("--dry", action="store_true", help="on the CPU at toy sizes: shows the script works")
    p.add_argument("--stages", default="tests,semisup,usb,train",
                   help="comma-separated subset of tests,semisup,usb,train (train needs semisup)")
    args = p.parse_args(argv)
    args.device = "cpu" if args.dry else "cuda"
    if args.dry:
        args.rate_steps, args.minutes = min(args.rate_steps, 3), min(args.minutes, 0.5)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "semisup_gpu_check"
    work.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    log.write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               SEMISUP_CACHE=str(work / "cache"), PYTHONUNBUFFERED="1")
    t_start = time.perf_counter()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info = {"date": datetime.date.today().isoformat(), "gpu": gpu if not args.dry else None,
            "dry": args.dry, "torch": torch.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    if not args.dry and gpu is None:
        print("gpu_check: no CUDA device; run with --dry to check the script on a CPU", file=sys.stderr)
        return 2
    folder = find_folder(args.data, work)
    res: dict = {"info": info, "tests": None, "rates": [], "train": None}

    def save():
        (args.out / "gpu_check.json").write_text(json.dumps(res, indent=1))
        (args.out / "gpu_check.md").write_text(markdown(res, args))

    stages = set(args.stages.split(","))
    # 1. the CUDA tests
    pytest = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    rc, tail, dt = sh(pytest, args.stage_timeout, env, log) if "tests" in stages else (None, "not run", 0.0)
    res["tests"] = {"rc": rc, "seconds": round(dt, 1), "summary": (tail.strip().splitlines() or ["?"])[-1]}
    save()

    # 2. images/s: semisup settings, then USB on the labelled images of semisup's split
    n = args.rate_steps
    for name, extra in [] if "semisup" not in stages else [("fp32", ["--run.amp=off", "--run.channels_last=false"]),
                        ("bf16 + channels_last", ["--run.amp=bf16", "--run.channels_last=true"]),
                        ("bf16 + channels_last + compile", ["--run.amp=bf16", "--run.channels_last=true",
                                                            "--run.compile=true"])]:
        res["rates"].append(semisup_rate(args, folder, work, name.replace(" + ", "_"), n, extra, env, log))
        save()
    split = work / "runs" / "bf16_channels_last" / "split.json"
    if "usb" in stages and not split.exists():  # USB trains on the labelled images of semisup's split
        semisup_rate(args, folder, work, "bf16_channels_last", 1, [], env, log)
    py, uenv, why = usb_python(args, work, log) if "usb" in stages else (None, {}, "")
    for amp in (False, True) if "usb" in stages else ():
        res["rates"].append(usb_rate(args, folder, work, py, uenv if py else why, split, n, amp, log))
        save()

    # 3. the preset for a fixed time, its schedule sized from the measured rate of the fastest setting
    ok = [r for r in res["rates"] if r["trainer"] == "semisup" and r.get("img_s")]
    best = max(ok, key=lambda r: r["img_s"]) if ok else None
    if best is not None:
        steps = max(10, int(args.minutes * 60 / best["step_s_median"] * 0.9))
        extra = {"fp32": ["--run.amp=off", "--run.channels_last=false"],
                 "bf16_channels_last": ["--run.amp=bf16"],
                 "bf16_channels_last_compile": ["--run.amp=bf16", "--run.compile=true"]}[best["setting"]]
        out = work / "runs" / "preset"
        shutil.rmtree(out, ignore_errors=True)
        every = max(1, steps // 10)
        argv = [sys.executable, "-m", "semisup", "train", "--preset", "cifar10_4000_wrn", "--data.name=folder",
                f"--data.root={folder}", f"--train.steps={steps}", f"--train.eval_every={every}",
                f"--train.max_minutes={args.minutes * 1.15:.2f}", f"--run.out={out}", "--run.progress=false",
                "--run.tensorboard=false", f"--run.device={args.device}", *extra]
        rc, tail, dt = sh(argv, args.minutes * 60 * 1.3 + 120, env, log)
        curve = []
        if (out / "metrics.jsonl").exists():
            for line in (out / "metrics.jsonl").read_text().splitlines():
                r = json.loads(line)
                curve.append({"step": r["step"], "train_s": round(r["train_seconds"], 1),
                              "test_top1": r["test"]["top1"]})
        res["train"] = {"rc": rc, "wall_s": round(dt, 1), "steps": steps, "setting": best["setting"],
                        "eval_every": every, "curve": curve, "command": "semisup " + " ".join(argv[3:]),
                        **({"error": (tail.strip().splitlines() or ["?"])[-1][:160]} if rc else {})}
    info["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    if args.results:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import results

        results.write_section(title(res), body(res, args), args.results)
    print(markdown(res, args))
    return 0


def title(res: dict) -> str:
    """The section's title: one section per GPU."""
    return f"GPU check: {res['info']['gpu'] or 'dry run on the CPU (toy sizes, no figure to keep)'}"


def markdown(res: dict, args) -> str:
    """The section as gpu_check.md holds it: its heading, then ``body``."""
    return f"## {title(res)}\n\n{body(res, args)}"


def body(res: dict, args) -> str:
    """Date, command, machine, then each stage's figures."""
    i = res["info"]
    lines = [f"{i['date']}; `bash benchmarks/gpu_check.sh --data <CIFAR-10 folder or .tar.gz> "
             f"--minutes {args.minutes:g}` "
             f"(torch {i['torch']}, Python {i['python']}, {i['cpus']} CPU cores; total {i.get('total_s', '?')} s).",
             ""]
    t = res.get("tests")
    if t:
        lines += [f"CUDA tests (`pytest -m cuda`): {t['summary']} (exit {t['rc']}, {t['seconds']} s).", ""]
    if res["rates"]:
        lines += [f"FixMatch WRN-28-2, CIFAR-10 4000 labels, B 64, mu 7 (960 images a step), "
                  f"{args.rate_steps} steps each, images/s from the median step time (semisup) or the steady "
                  "rate after 5 steps (USB):", "",
                  "| trainer | setting | images/s | wall s | note |", "|---|---|---|---|---|"]
        for r in res["rates"]:
            note = r.get("error", "") or (f"{r['num_workers']} loader workers each" if "num_workers" in r else "")
            lines.append(f"| {r['trainer']} | {r['setting']} | {r.get('img_s', '–')} | {r.get('wall_s', '–')} | "
                         f"{note} |")
        lines.append("")
    tr = res.get("train")
    if tr:
        lines += [f"CIFAR-10-4000 (`cifar10_4000_wrn`, FixMatch) for {args.minutes:g} minutes: {tr['steps']} steps "
                  f"({tr['setting']}), evaluated every {tr['eval_every']}; EMA model, test top-1 against training "
                  f"time{(' (' + tr['error'] + ')') if tr.get('error') else ''}:", "",
                  "| step | train s | test top-1 |", "|---|---|---|"]
        lines += [f"| {c['step']} | {c['train_s']} | {c['test_top1']:.4f} |" for c in tr["curve"]]
        lines += ["", f"    {tr['command']}", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
