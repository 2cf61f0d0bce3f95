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
