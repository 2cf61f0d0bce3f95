"""The benchmark scripts' own logic that does not train: pairing two sweeps' logs (micro/bf16_parity.py),
micro/bench_bn_act.py on tiny shapes, micro/profile_step.py's op table, sweeps/sweep.py's config comparison."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    """A script by its path under benchmarks/ without .py ("micro/bf16_parity"), as a fresh module."""
    spec = importlib.util.spec_from_file_location(Path(name).name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(log: Path, rel: str, amp: str, top1: float, seconds: float, extra: str = "") -> None:
    import records

    flag = "off" if amp == "None" else "bf16"
    argv = (f"semisup train --algorithm.name=x --run.seed=0{extra} --run.out=runs/{log.stem}/{rel} "
            f"--run.amp={flag}").split()
    summary = {"amp": amp, "train_seconds": seconds, "final": {"test_top1": top1}}
    records.put(log, records.entry(rel, argv, {}, summary, [], None, None))


def test_parity_pairs_records_by_run_and_reports_paired_differences(tmp_path):
    parity = _load("micro/bf16_parity")
    fp32, bf16 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for rel, a32, a16 in (("l40/fixmatch_s0", 0.70, 0.69), ("l40/fixmatch_s1", 0.60, 0.63),
                          ("l40/supervised_s0", 0.50, 0.50)):
        _record(fp32, rel, "None", a32, 600.0)
        _record(bf16, rel, "torch.bfloat16", a16, 300.0)
    _record(fp32, "l40/mixmatch_s0", "None", 0.5, 60.0)  # no bf16 twin: left out
    body = parity.from_records(fp32, bf16)
    assert "| l40/fixmatch_s0 | 70.00 | 69.00 | -1.00 | 10.0 | 5.0 | 2.00x |" in body
    assert "| l40/fixmatch | 2 | +1.00 | 2.83 | -1.00 | +3.00 |" in body  # mean of -1 and +3, sample std
    assert "| all | 3 | +0.67 |" in body
    assert "mixmatch" not in body


def test_parity_refuses_pairs_whose_commands_differ_in_more_than_amp(tmp_path):
    parity = _load("micro/bf16_parity")
    _record(tmp_path / "a.jsonl", "l40/fixmatch_s0", "None", 0.7, 60.0)
    _record(tmp_path / "b.jsonl", "l40/fixmatch_s0", "torch.bfloat16", 0.7, 60.0, extra=" --train.steps=5")
    with pytest.raises(SystemExit, match="differ in more than --run.amp"):
        parity.from_records(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    with pytest.raises(SystemExit, match="no run is recorded under both"):
        parity.from_records(tmp_path / "a.jsonl", tmp_path / "c.jsonl")


def test_bench_bn_act_prints_a_row_per_shape_with_both_errors(monkeypatch, capsys):
    """Small shapes, one repetition, print only: the table has both paths' times and dx errors, and the fused
    path's error is float-sized (the script's accuracy columns measure something real)."""
    from semisup.models import fused

    if fused.library() is None:
        pytest.skip(f"fused kernel unavailable: {fused.unavailable_reason()}")
    mod = _load("micro/bench_bn_act")
    monkeypatch.setattr(mod, "SHAPES", [(8, 16, 8, 8), (4, 32, 4, 4)])
    monkeypatch.setattr("sys.argv", ["bench_bn_act.py", "--reps", "1", "--no-write"])
    before = fused.enabled()
    mod.main()
    assert fused.enabled() == before
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("| bfloat16", "| float32"))]
    assert len(table) == 4
    fp32_fused_err = [float(ln.split("|")[-2]) for ln in table if ln.startswith("| float32")]
    assert max(fp32_fused_err) < 1e-5


def test_profile_top_ops_counts_only_ops_inside_the_training_steps():
    """The evaluation after the last step, the loop's regions and autograd bookkeeping are not counted."""
    from types import SimpleNamespace as NS

    mod = _load("micro/profile_step")

    def ev(name, start_s, self_us):
        return NS(name=name, time_range=NS(start=start_s * 1e6), self_cpu_time_total=self_us)

    events = [ev("aten::convolution_backward", 1.0, 50), ev("_BNActBackward", 1.5, 30), ev("_BNAct", 2.0, 20),
              ev("semisup.forward", 1.0, 999), ev("autograd::engine::evaluate_function: X", 1.2, 999),
              ev("aten::native_batch_norm", 3.5, 999)]  # at 3.5 s: the evaluation, after the steps
    top, total = mod._top_ops(events, 1.0, 3.0, n=2)
    assert total == 100
    assert top == [("convolution_backward", 50), ("_BNActBackward", 30)]


def test_a_sweep_record_is_reused_only_while_its_command_still_resolves_to_the_recorded_config(tmp_path):
    import sweep
    import yaml

    from semisup import config as C

    argv = ["semisup", "train", "--preset", "fashion_mnist_40", "--train.steps=30", f"--run.out={tmp_path}/run",
            "--overwrite", "--run.progress=false", "--run.threads=1"]
    saved = yaml.safe_load(C.to_yaml(C.resolve("fashion_mnist_40", overrides=["--train.steps=30",
                                                                               "--run.out=elsewhere"])))
    assert sweep.same_config(argv, saved)  # where it ran and how it reported do not matter
    # the same words after a default changed: a record written before optim.ema_warmup existed ran uniform
    del saved["optim"]["ema_warmup"]
    assert not sweep.same_config(argv, saved)
    assert sweep.same_config([*argv, "--optim.ema_warmup=uniform"], saved)
    saved["optim"]["no_such_key"] = 1  # a key the schema has since dropped: another config, not an error
    assert not sweep.same_config([*argv, "--optim.ema_warmup=uniform"], saved)


def test_bench_allocator_environments_and_table():
    """Each setting's environment (the start-up row leaves the choice to semisup), and the table's medians and
    ratios against the first row."""
    mod = _load("micro/bench_allocator")
    env = mod.environment(mod.SETTINGS["jemalloc, default decay (LD_PRELOAD alone)"], "/lib/je.so")
    assert env["LD_PRELOAD"] == "/lib/je.so" and env["SEMISUP_ALLOCATOR"] == "system" and "MALLOC_CONF" not in env
    env = mod.environment(mod.SETTINGS["jemalloc, decay off (semisup's start-up)"], "/lib/je.so")
    assert not {"LD_PRELOAD", "MALLOC_CONF", "SEMISUP_ALLOCATOR"} & set(env)

    def run(step_s, allocator):
        return {"step_s": step_s, "images": 320, "top1": 0.25, "faults_per_step": 1000.0, "system_share": 0.2,
                "allocator": allocator}

    body = mod.table({"glibc malloc": [run(2.0, "default"), run(2.2, "default"), run(1.9, "default")],
                      "jemalloc": [run(1.0, "jemalloc"), run(1.1, "jemalloc"), run(0.9, "jemalloc")]})
    assert "| glibc malloc | default | 2.000 (2.000, 2.200, 1.900) | 160.0 | 1.00x | 1,000 | 20.0% | 0.2500 |" in body
    assert "| jemalloc | jemalloc | 1.000 (1.000, 1.100, 0.900) | 320.0 | 2.00x |" in body
