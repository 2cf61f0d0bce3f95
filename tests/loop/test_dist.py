"""Two processes with gloo on CPU (torchrun) match one process with the same global batch."""
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, tiny_overrides


@pytest.mark.slow
def test_two_ranks_match_one_process_and_only_rank0_writes(tmp_path):
    # No batch norm (lenet) and no augmentation randomness, so the only difference between the runs is
    # how the global batch is split: DDP must make the updates identical.
    common = tiny_overrides("X", steps=6, **{
        "model.name": "lenet", "model.dropout": 1e-9, "data.weak": "none", "data.strong": "none",
        "algorithm.threshold": 0.0, "train.batch_size": 16, "train.mu": 2, "train.eval_every": 3,
        "run.amp": "off", "run.deterministic": "true"})
    common = [o for o in common if not o.startswith("--run.out")]
    env = dict(os.environ, OMP_NUM_THREADS="1", SEMISUP_ALLOCATOR="system")
    one = subprocess.run([sys.executable, "-m", "semisup", "train", *common, f"--run.out={tmp_path / 'one'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "semisup", "train", *common,
                          f"--run.out={tmp_path / 'two'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, "\n".join(x for x in two.stderr.splitlines() if "rror" in x)[-4000:]
    summaries = [json.loads(x) for x in two.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["best"]["score"] > 0  # rank 0 alone reports
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=False)
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5, rtol=1e-4), k
    for k, v in a["ema"].items():
        assert torch.allclose(v.float(), b["ema"][k].float(), atol=1e-5, rtol=1e-4), k
    # rank 0 alone wrote: one metrics line per evaluation, the same files as the single process
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [3, 6]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    ra = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in lines]
    assert ra[-1]["test"]["top1"] == pytest.approx(rb[-1]["test"]["top1"], abs=2e-3)
    assert ra[-1]["train"]["pass_rate"] == pytest.approx(rb[-1]["train"]["pass_rate"])  # stats gathered over ranks


def _rank_pid(rank: int, marker: str) -> int | None:
    """The pid of the torchrun worker with RANK=rank whose command line mentions ``marker``."""
    import glob

    for d in glob.glob("/proc/[0-9]*"):
        try:
            env = open(d + "/environ", "rb").read().split(b"\0")
            cmd = open(d + "/cmdline", "rb").read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and marker.encode() in cmd and b"semisup" in cmd:
            return int(d.rsplit("/", 1)[1])
    return None


@pytest.mark.slow
def test_a_lost_rank_stops_the_job_with_one_line_and_resume_equals_the_uninterrupted_run(tmp_path):
    """2-rank gloo job, rank 1 SIGKILLed after the first checkpoint: rank 0 stops at once with one clear line
    (no hang until the timeout), and --resume with 2 ranks ends exactly as the uninterrupted job."""
    import signal
    import time

    common = tiny_overrides("X", steps=40, **{
        "model.name": "lenet", "train.batch_size": 16, "train.mu": 2, "train.eval_every": 10,
        "run.amp": "off", "run.deterministic": "true", "run.dist_timeout": 60})
    common = [o for o in common if not o.startswith("--run.out")]
    env = dict(os.environ, OMP_NUM_THREADS="1", SEMISUP_ALLOCATOR="system")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "semisup",
           "train"]
    ref = subprocess.run([*run, *common, f"--run.out={tmp_path / 'ref'}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "lost"
    job = subprocess.Popen([*run, *common, f"--run.out={out}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (out / "last.pt").exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        victim = _rank_pid(1, str(out))
        assert job.poll() is None and victim, "the job must still be running with a rank 1 to kill"
        os.kill(victim, signal.SIGKILL)
        t0 = time.time()
        _, err = job.communicate(timeout=60)  # well inside run.dist_timeout: no waiting for the timeout
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode != 0 and time.time() - t0 < 60
    lines = [x for x in err.splitlines() if "semisup: error:" in x]
    assert len(lines) == 1 and "lost contact with another process of this job" in lines[0], err[-3000:]
    res = subprocess.run([*run, "--resume", f"--run.out={out}", "--run.progress=false"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in a + b:
        for k in ("train_seconds", "images_per_s", "step_seconds_median", "data_seconds_median"):
            r.pop(k)
    assert [r["step"] for r in b] == [10, 20, 30, 40] and a == b
