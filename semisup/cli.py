"""Command line: argv -> Config -> train(). No argparse namespace travels below this file.

    semisup train --preset NAME | --config FILE [--resume] [--overwrite] [--section.key=value ...]
    semisup pretrain --method simclr [--preset NAME | --config FILE] [--resume] [--section.key=value ...]
    semisup linear-eval --encoder PATH [--preset NAME | --config FILE] [--section.key=value ...]
    semisup eval RUN_DIR_OR_CKPT [--split test|val]
    semisup predict RUN_DIR PATH... [-o predictions.csv] [--top-k K] [--batch-size N] [--raw]
    semisup export RUN_DIR --format torchscript|onnx [-o FILE] [--input uint8|float] [--raw]
    semisup report RUN_DIR [RUN_DIR ...] [-o OUT] [--tsne N]
    semisup list [--cards]
    semisup card NAME
    semisup demo [--minutes M]

predict classifies image files (PATHs: files, and folders searched recursively) with the run's model, decoded
as the run's own images were, and writes a CSV (path, class, probability, then class_2, probability_2, ... for
--top-k > 1) to -o or stdout, only once every image is done. export writes the model with its normalisation
built in (semisup/export.py says what goes in and comes out). Neither needs the run's training data.

Errors the user can cause print one line ("semisup: error: ...") and exit with code 2.
SIGTERM / SIGINT during training (cluster pre-emption, Ctrl-C): the step finishes, the run is
evaluated and last.pt written, then exit 128 + signum (143 / 130): resume with --resume.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import config as C
from .errors import LostRank, UserError


def _config_help() -> str:
    """Every config key with its default, so `semisup train --help` is the reference."""
    import dataclasses

    lines = ["config keys (--section.key=value), with defaults:"]
    for sec, cls in C.SECTIONS.items():
        keys = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls))
        lines.append(f"  {sec}: {keys}")
    from .algorithms import ALGORITHMS

    for name in ALGORITHMS.names():
        keys = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(ALGORITHMS.get(name)))
        lines.append(f"  algorithm (name={name}): {keys or '-'}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="semisup", description="Semi-supervised image classification.",
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", allow_abbrev=False, help="train one run",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_config_help(),
                       description="Train one run. Config precedence: defaults < --preset (over its base "
                                   "preset) < --config < --section.key=value overrides (see `semisup list` for "
                                   "names).")
    t.add_argument("--preset", help="a named preset (semisup list)")
    t.add_argument("--config", help="a YAML config file")
    t.add_argument("--resume", action="store_true", help="continue the run in run.out from its last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in run.out")
    pt = sub.add_parser("pretrain", allow_abbrev=False, help="self-supervised pretraining -> RUN_DIR/encoder.pt",
                        description="Pretrain the encoder without labels (SimCLR), with the training loop and "
                                    "the method's pretraining preset (pretrain_simclr); writes RUN_DIR/encoder.pt. "
                                    "Precedence: defaults < pretraining preset < --preset < --config < overrides.")
    pt.add_argument("--method", choices=("simclr",), default="simclr")
    le = sub.add_parser("linear-eval", allow_abbrev=False, help="linear head on a frozen pretrained encoder",
                        description="Train a linear head on the labelled split with the encoder of --encoder "
                                    "frozen (weights and batch norm); model and data default to those the "
                                    "encoder was pretrained with. Fine-tuning instead: semisup train "
                                    "--algorithm.name=supervised --model.init_from=PATH.")
    le.add_argument("--encoder", required=True, help="an encoder.pt from semisup pretrain (or a run's best.pt)")
    for q in (pt, le):
        q.add_argument("--preset", help="a named preset (semisup list)")
        q.add_argument("--config", help="a YAML config file")
        q.add_argument("--resume", action="store_true", help="continue the run in run.out from its last.pt")
        q.add_argument("--overwrite", action="store_true", help="replace a run already in run.out")
    e = sub.add_parser("eval", allow_abbrev=False, help="evaluate a run directory or checkpoint")
    e.add_argument("target", help="a run directory (uses best.pt) or a .pt checkpoint")
    e.add_argument("--split", choices=("test", "val"), default="test")
    e.add_argument("--raw", action="store_true", help="evaluate the raw weights instead of the EMA")
    pr = sub.add_parser("predict", allow_abbrev=False, help="classify image files with a trained run -> CSV",
                        description="Classify image files with a run's model (best.pt, else last.pt; EMA weights "
                                    "unless --raw), each decoded as the run's own images (size, channels, fit). "
                                    "Writes a CSV: path, class, probability (then class_2, probability_2, ... "
                                    "for --top-k > 1), to -o only once every image is done, else to stdout. "
                                    "The run's training data is not needed.")
    pr.add_argument("target", metavar="RUN_DIR", help="a run directory or a .pt checkpoint in one")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    pr.add_argument("-o", "--out", help="CSV file to write (default: stdout)")
    pr.add_argument("--top-k", type=int, default=1, metavar="K", help="the K most probable classes per image")
    pr.add_argument("--batch-size", type=int, default=None, metavar="N",
                    help="images per forward pass (default: the run's train.eval_batch_size)")
    pr.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    ex = sub.add_parser("export", allow_abbrev=False, help="the model as a TorchScript or ONNX file",
                        description="Write the run's model with its normalisation built in: input images "
                                    "(B, C, H, W) at the run's image size, output logits (B, K) float32; class "
                                    "names and preprocessing facts in the file's metadata. TorchScript takes "
                                    "uint8 0..255 or float in [0, 1]; ONNX takes --input (default uint8). The "
                                    "file is checked against PyTorch before it is written.")
    ex.add_argument("target", metavar="RUN_DIR", help="a run directory or a .pt checkpoint in one")
    ex.add_argument("--format", required=True, choices=("torchscript", "onnx"), dest="fmt")
    ex.add_argument("-o", "--out", help="output file (default: RUN_DIR/model.ts or RUN_DIR/model.onnx)")
    ex.add_argument("--input", choices=("uint8", "float"), default=None,
                    help="ONNX input dtype: uint8 pixels 0..255 (default) or float32 in [0, 1]")
    ex.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    r = sub.add_parser("report", allow_abbrev=False, help="HTML report (figures, t-SNE) of one or more runs",
                       description="Write a self-contained report.html and its PNGs from what run directories "
                                   "hold (finished, running or resumed); the run directories are only read.")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("-o", "--out", help="output directory (default: RUN_DIR/report for one run, ./report for several)")
    r.add_argument("--tsne", type=int, default=2000, metavar="N",
                   help="t-SNE of up to N test images from best.pt (default 2000; 0 leaves it out)")
    ls = sub.add_parser("list", help="algorithms, models, datasets and presets")
    ls.add_argument("--cards", action="store_true", help="every algorithm's reproduction card instead")
    cd = sub.add_parser("card", allow_abbrev=False, help="an algorithm's reproduction card",
                        description="Paper, reference code, presets, published numbers, semisup's own numbers "
                                    "with their commands, and each deviation from the reference code.")
    cd.add_argument("name", help="a registered algorithm (semisup list)")
    d = sub.add_parser("demo", allow_abbrev=False, help="supervised vs FixMatch on bundled data (seconds)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--dataset", default="auto", help="auto (= digits, ~20 s) or fashion_mnist (~2 min)")
    return p


def _saved_config(ov: dict, wanted: str | None) -> dict:
    """The config.yaml of the run a bare --resume continues (--run.out), as it ran (config.load_saved)."""
    out = ov.get("run", {}).get("out")
    if out is None:
        raise UserError("--resume needs the run: pass --run.out=DIR (or the --preset/--config it used)")
    saved = Path(out) / "config.yaml"
    if not saved.exists():
        raise UserError(f"cannot resume: {str(saved)!r} not found; is --run.out the run directory?")
    raw = C.load_saved(saved)
    was = (raw.get("algorithm") or {}).get("name", "fixmatch")
    if wanted not in (None, was):
        raise UserError(f"cannot resume {out!r} with --algorithm.name={wanted}: the run trains {was!r} and "
                        "resuming cannot change algorithm.name; start a new run (another --run.out)")
    return raw


def _run_config(args, overrides: list[str], under: list | tuple = (), algorithm: str | None = None,
                forced: dict | None = None) -> C.Config:
    """The config of a training command, by config.resolve's precedence: defaults < ``under`` (the command's
    own presets or mappings) < --preset (over its base) < --config (for a bare --resume: the run's saved
    config.yaml) < overrides < ``forced``; ``algorithm`` fixes algorithm.name."""
    ov = C.parse_overrides(overrides)
    wanted = ov.get("algorithm", {}).get("name")
    if algorithm and wanted not in (None, algorithm):
        raise UserError(f"semisup {args.cmd} trains algorithm {algorithm!r}; drop --algorithm.name={wanted}")
    if args.resume and not (args.preset or args.config):
        return C.resolve(config_file=_saved_config(ov, wanted), overrides=ov, forced=forced)
    return C.resolve(args.preset, args.config, ov, under=under, algorithm=algorithm, forced=forced)


def _rank0() -> bool:
    """Under torchrun only rank 0 reports (the others' summaries hold no evaluation)."""
    return os.environ.get("RANK", "0") == "0"


def _print_result(res, **extra) -> None:
    if not _rank0():
        return
    part = "test" if "test" in res.final else "val"  # data without a test set: validation figures, named so
    t = res.final[part]
    print(json.dumps({"run_dir": str(res.run_dir), "step": res.steps, f"{part}_top1": round(t["top1"], 4),
                      f"{part}_balanced_acc": round(t["balanced_acc"], 4), "best": res.best,
                      "images_per_s": round(res.images_per_s, 1), **extra}))


def cmd_pretrain(args, overrides: list[str]) -> int:
    from .pretrain import PRETRAIN_PRESETS, pretrain

    cfg = _run_config(args, overrides, [PRETRAIN_PRESETS[args.method]], algorithm=args.method)
    res, encoder = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    probe = {k: res.final["test"][k] for k in ("alignment", "uniformity") if k in res.final["test"]}
    if not _rank0():
        return 0
    print(json.dumps({"run_dir": str(res.run_dir), "encoder": str(encoder), "step": res.steps,
                      "loss": res.final["train"].get("loss"), **probe, "images_per_s": round(res.images_per_s, 1)}))
    return 0


def cmd_linear_eval(args, overrides: list[str]) -> int:
    from .pretrain import LINEAR_EVAL_PRESET, encoder_config
    from .train import train

    under = [encoder_config(args.encoder), LINEAR_EVAL_PRESET]
    cfg = _run_config(args, overrides, under, algorithm="supervised",
                      forced={"model": {"init_from": args.encoder, "init_head": False, "freeze_encoder": True}})
    _print_result(train(cfg, resume=args.resume, overwrite=args.overwrite), encoder=args.encoder)
    return 0


def cmd_train(args, overrides: list[str]) -> int:
    from .train import train

    _print_result(train(_run_config(args, overrides), resume=args.resume, overwrite=args.overwrite))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_checkpoint

    out = evaluate_checkpoint(args.target, split=args.split, raw=args.raw)
    print(json.dumps({k: v for k, v in out.items() if k != "confusion"}))
    return 0


def _use_run_threads(cfg) -> None:
    """Torch threads as the run's run.threads says (0: torch's default), as semisup eval does."""
    if cfg.run.threads > 0:
        import torch

        torch.set_num_threads(cfg.run.threads)


def _predict_csv(pred, paths: list[str], top_k: int, batch_size: int) -> str:
    """The CSV text of every image's prediction, with a progress bar on stderr (on a terminal)."""
    import csv
    import io

    from tqdm.auto import tqdm

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "class", "probability"] + [f"{c}_{k}" for k in range(2, top_k + 1)
                                                    for c in ("class", "probability")])
    with tqdm(total=len(paths), unit="img", file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
              disable=None) as bar:  # disable=None: drawn on a terminal only, never into a log or pipe
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            for path, r in zip(chunk, pred.predict(chunk, top_k=top_k, batch_size=batch_size)):
                w.writerow([path] + [v for c, p in r["top_k"] for v in (c, f"{p:.6f}")])
            bar.update(len(chunk))
    return buf.getvalue()


def cmd_predict(args) -> int:
    import time

    from .data.images import IMAGE_EXTENSIONS, list_images
    from .inference import load

    t0 = time.perf_counter()
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise UserError(f"cannot write {args.out!r}: " + ("it is a directory" if out.is_dir() else
                                                         f"the directory {str(out.parent)!r} does not exist"))
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    pred = load(args.target, raw=args.raw)
    _use_run_threads(pred.cfg)
    if not 1 <= args.top_k <= len(pred.classes):
        raise UserError(f"--top-k must be between 1 and the number of classes ({len(pred.classes)}), got {args.top_k}")
    paths, seen = [], set()
    for p in args.paths:
        if not Path(p).exists():
            raise UserError(f"{p!r} does not exist; give image files or folders holding them")
        for f in list_images(p):
            if f not in seen:
                seen.add(f)
                paths.append(f)
    if not paths:
        raise UserError(f"no image found under {', '.join(map(repr, args.paths))} (looked for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    text = _predict_csv(pred, paths, args.top_k, args.batch_size or pred.batch_size)
    if out is not None:  # temp file + rename: a failure (a full disk) leaves no half CSV
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(text)
            os.replace(tmp, out)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {args.out!r} ({e.strerror or e})") from None
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    dt = time.perf_counter() - t0  # loading the model, decoding, the forward passes and the CSV
    print(f"semisup: predicted {len(paths)} images in {dt:.1f} s ({len(paths) / max(dt, 1e-9):.0f} images/s) "
          f"-> {args.out or 'stdout'}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .export import export
    from .inference import resolve_checkpoint

    if args.input is not None and args.fmt != "onnx":
        raise UserError("--input is for --format onnx; the TorchScript file takes both uint8 and float input")
    _use_run_threads(C.from_dict(C.load_saved(resolve_checkpoint(args.target).parent / "config.yaml")))
    print(json.dumps(export(args.target, args.fmt, args.out, raw=args.raw, input_dtype=args.input or "uint8")))
    return 0


def cmd_report(args) -> int:
    from .report import build_report

    print(build_report(args.run_dirs, args.out, tsne_points=args.tsne))
    return 0


def cmd_card(names: list[str]) -> int:
    from .cards import load_card, render_text

    print("\n\n".join(render_text(load_card(n)) for n in names))
    return 0


def cmd_list(cards: bool = False) -> int:
    from .algorithms import ALGORITHMS

    if cards:
        return cmd_card(ALGORITHMS.names())
    from .data.dataset import SOURCES
    from .models import MODELS

    for title, names in (("algorithms", ALGORITHMS.names()), ("models", [*MODELS.names(), "timm:<architecture>"]),
                         ("datasets", SOURCES.names()), ("presets", C.preset_names())):
        print(f"{title}: {', '.join(names)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _parser()
    args, extra = p.parse_known_args(argv)
    try:
        if args.cmd == "train":
            return cmd_train(args, extra)
        if args.cmd == "pretrain":
            return cmd_pretrain(args, extra)
        if args.cmd == "linear-eval":
            return cmd_linear_eval(args, extra)
        if extra:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.cmd == "eval":
            return cmd_eval(args)
        if args.cmd == "predict":
            return cmd_predict(args)
        if args.cmd == "export":
            return cmd_export(args)
        if args.cmd == "report":
            return cmd_report(args)
        if args.cmd == "list":
            return cmd_list(args.cards)
        if args.cmd == "card":
            return cmd_card([args.name])
        from .demo import run_demo

        return run_demo(args.out, args.dataset)
    except UserError as e:
        print(f"semisup: error: {e}", file=sys.stderr)
        return 2
    except LostRank as e:
        print(f"semisup: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # train's Stopped (SIGTERM/SIGINT, checkpoint written) or a plain Ctrl-C
        print(f"semisup: interrupted: {e}" if str(e) else "semisup: interrupted", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))  # the shell's convention: 143 SIGTERM, 130 SIGINT


def entry() -> None:
    """Console entry point (`semisup`, `python -m semisup`): training commands run under jemalloc
    when it is installed (see semisup/allocator.py), then main()."""
    argv = sys.argv[1:]
    if argv and argv[0] in ("train", "demo", "pretrain", "linear-eval"):
        from .allocator import reexec_with_jemalloc

        reexec_with_jemalloc(argv)
    sys.exit(main(argv))
