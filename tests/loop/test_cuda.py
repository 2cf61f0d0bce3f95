"""The CUDA paths: skipped without a GPU (CI has none); benchmarks/gpu_check.sh runs them on one
(`pytest -m cuda`). Every registered algorithm trains a few steps on the GPU with bf16 autocast and
channels_last; `semisup eval` reproduces a GPU run's score; deterministic GPU runs repeat exactly."""
import json

import pytest
import torch
from helpers import tiny_overrides

from semisup import config as C
from semisup.algorithms import ALGORITHMS
from semisup.train import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", sorted(n for n in ALGORITHMS.names() if n != "simclr"))
def test_every_algorithm_trains_on_the_gpu_with_bf16(tmp_path, name):
    extra = {"algorithm.name": name, "run.device": "cuda", "run.amp": "bf16", "run.channels_last": "true"}
    if name == "remixmatch":
        extra["data.strong"] = "ctaugment"
    res = train(C.resolve(overrides=tiny_overrides(tmp_path / name, steps=6, **extra)))
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and res.steps == 6
    assert 0.0 <= res.final["test"]["top1"] <= 1.0 and res.final["test"]["loss"] == res.final["test"]["loss"]


def test_a_gpu_run_learns_and_semisup_eval_reproduces_its_score(tmp_path):
    from semisup.evaluate import evaluate_checkpoint

    out = tmp_path / "gpu"
    ov = tiny_overrides(out, steps=150, **{"run.device": "cuda", "train.eval_every": 75, "data.labels_per_class": 5})
    res = train(C.resolve(overrides=ov))
    assert res.final["test"]["top1"] > 0.5  # digits, 50 labels: chance is 0.1
    assert evaluate_checkpoint(str(out))["top1"] == pytest.approx(res.best["score"])
    ck = torch.load(out / "best.pt", map_location="cpu", weights_only=False)  # a GPU checkpoint opens on a CPU
    assert all(t.device.type == "cpu" for t in ck["ema"].values())


def test_deterministic_gpu_runs_repeat_exactly(tmp_path):
    ov = {"run.device": "cuda", "run.deterministic": "true", "run.amp": "off"}
    a = train(C.resolve(overrides=tiny_overrides(tmp_path / "a", steps=8, **ov)))
    b = train(C.resolve(overrides=tiny_overrides(tmp_path / "b", steps=8, **ov)))
    assert a.final["test"] == b.final["test"]
