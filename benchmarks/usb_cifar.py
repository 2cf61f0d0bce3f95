#!/usr/bin/env python
"""USB (semilearn 0.3.2) FixMatch on the CIFAR-10 JPEG folder, on the CPU or a GPU: the peer side of the
CIFAR-10 comparisons (compare_usb_cifar.py on CPU, gpu_check.sh on a GPU).

Runs USB's own pieces end to end: get_config, its WideResNet (wrn_28_2), get_algorithm('fixmatch'),
BasicDataset, its RandAugment(3, 5), get_data_loader and AlgorithmBase.train() (USB's loop with its
hooks), then AlgorithmBase.evaluate() (EMA weights) and the raw weights. The labelled images are the
ones semisup trained on: ``--labelled`` takes a semisup run's split.json (or a .npy of indices), indices
into the folder's train images in semisup's order (classes sorted by name, files sorted within a class).
The unlabelled set is every other train image, as in semisup's balanced split.

This script imports semilearn, never semisup; it runs in USB's environment:

    bash ../shared/peers/usb/setup.sh
    ~/.cache/semisup-peers/usb-venv/bin/python benchmarks/usb_cifar.py --data /tmp/cifar10 \\
        --labelled runs/c10/split.json --iters 20 --no-eval --json /tmp/usb.json

On the CPU, semilearn's unconditional CUDA calls are redirected (no file of the package is edited), as in
../shared/peers/usb/usb_fashion.py. semilearn imports wandb and aim at import time for hooks this script
does not use; where they are not installed, empty modules stand in for them.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import resource
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor

import numpy as np

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]  # USB's CIFAR-10 statistics


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/<class>/*.jpg and test/<class>/*.jpg")
    p.add_argument("--labelled", required=True, help="semisup split.json or .npy of labelled train indices")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--net", default="wrn_28_2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--uratio", type=int, default=7)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--ema-m", type=float, default=0.999)
    p.add_argument("--amp", action="store_true", help="USB's amp option (fp16 autocast + GradScaler)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    p.add_argument("--num-workers", type=int, default=1, help="DataLoader workers for each train loader")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-skip", type=int, default=5, help="first iterations left out of the steady rate")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--save-dir", default="/tmp/usb_cifar_runs")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def _decode(paths):
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")))
    return np.stack(out)


def read_folder(root: str, part: str, workers: int):
    """(N, 32, 32, 3) uint8 and (N,) labels in semisup's folder order."""
    d = os.path.join(root, part)
    classes = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(e.path for e in os.scandir(os.path.join(d, c)) if not e.name.startswith("."))
        paths += files
        labels += [k] * len(files)
    chunks = [paths[i:i + 2000] for i in range(0, len(paths), 2000)]
    with ProcessPoolExecutor(max(1, workers)) as ex:
        x = np.concatenate(list(ex.map(_decode, chunks)))
    return x, np.asarray(labels, dtype=np.int64), classes


def labelled_indices(path: str) -> np.ndarray:
    if path.endswith(".json"):
        with open(path) as f:
            return np.asarray(json.load(f)["labelled"], dtype=np.int64)
    return np.load(path).astype(np.int64)


def cpu_shim(torch):
    """semilearn calls .cuda(), torch.cuda.Event / synchronize / set_device unconditionally: no-ops on CPU."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self

    class _Event:
        def __init__(self, *a, **k):
            self.t = None

        def record(self, *a, **k):
            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return (end.t - self.t) * 1000.0

        def synchronize(self):
            pass

    torch.cuda.Event = _Event
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.set_device = lambda *a, **k: None


def stand_in_modules():
    for name in ("wandb", "aim"):
        try:
            __import__(name)
        except ImportError:  # a spec, so importlib.util.find_spec (transformers asks) treats it as installed
            m = types.ModuleType(name)
            m.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = m


def main(argv=None) -> dict:
    a = parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    if not cuda:
        cpu_shim(torch)
    stand_in_modules()
    import warnings

    warnings.filterwarnings("ignore")
    from semilearn import BasicDataset, get_algorithm, get_config, get_data_loader, get_net_builder
    from semilearn.core.hooks import Hook
    from semilearn.datasets.augmentation import RandAugment
    from torchvision import transforms

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    t0 = time.perf_counter()
    x_tr, y_tr, classes = read_folder(a.data, "train", os.cpu_count() or 1)
    x_te, y_te, _ = read_folder(a.data, "test", os.cpu_count() or 1)
    lb = labelled_indices(a.labelled)
    ulb = np.setdiff1d(np.arange(len(x_tr)), lb)
    t_data = time.perf_counter() - t0
    K = len(classes)
    cfg = get_config({
        "algorithm": "fixmatch", "net": a.net, "use_pretrain": False, "pretrain_path": "",
        "save_dir": a.save_dir, "save_name": f"usb_cifar_{a.net}_{len(lb)}_s{a.seed}", "resume": False,
        "overwrite": True, "epoch": 1, "num_train_iter": a.iters, "num_eval_iter": 10 ** 9, "num_log_iter": 50,
        "num_warmup_iter": 0, "num_labels": len(lb), "batch_size": a.batch_size, "uratio": a.uratio,
        "eval_batch_size": 256, "ema_m": a.ema_m, "ulb_loss_ratio": 1.0, "optim": "SGD", "lr": a.lr,
        "momentum": 0.9, "weight_decay": 5e-4, "layer_decay": 1.0, "T": 0.5, "p_cutoff": 0.95, "hard_label": True,
        "use_cat": True, "amp": a.amp, "clip_grad": 0, "num_classes": K,
        "dataset": "cifar10_folder",  # a name USB does not know: it builds no dataset of its own (no download)
        "data_dir": a.data, "img_size": 32, "crop_ratio": 0.875, "num_workers": a.num_workers,
        "include_lb_to_ulb": False, "seed": a.seed, "gpu": 0, "distributed": False,
        "world_size": 1, "rank": 0, "multiprocessing_distributed": False,
    })
    # USB's CIFAR-10 transforms (semilearn/datasets/cv_datasets/cifar.py)
    crop = transforms.RandomCrop(32, padding=int(32 * (1 - cfg.crop_ratio)), padding_mode="reflect")
    norm = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    weak = transforms.Compose([transforms.Resize(32), crop, transforms.RandomHorizontalFlip(), *norm])
    strong = transforms.Compose([transforms.Resize(32), crop, transforms.RandomHorizontalFlip(),
                                 RandAugment(3, 5), *norm])
    val = transforms.Compose([transforms.Resize(32), *norm])
    lb_d = BasicDataset("fixmatch", x_tr[lb], y_tr[lb], K, weak, is_ulb=False)
    ulb_d = BasicDataset("fixmatch", x_tr[ulb], y_tr[ulb], K, weak, is_ulb=True, strong_transform=strong)
    te_d = BasicDataset("fixmatch", x_te, y_te, K, val, is_ulb=False)

    alg = get_algorithm(cfg, get_net_builder(a.net, from_name=False), tb_log=None, logger=None)
    if cuda:
        alg.model, alg.ema_model = alg.model.cuda(0), alg.ema_model.cuda(0)
    alg.loader_dict = {
        "train_lb": get_data_loader(cfg, lb_d, cfg.batch_size, data_sampler=cfg.train_sampler,
                                    num_iters=cfg.num_train_iter, num_epochs=cfg.epoch, num_workers=a.num_workers),
        "train_ulb": get_data_loader(cfg, ulb_d, cfg.batch_size * cfg.uratio, data_sampler=cfg.train_sampler,
                                     num_iters=cfg.num_train_iter, num_epochs=cfg.epoch, num_workers=a.num_workers),
        "eval": get_data_loader(cfg, te_d, cfg.eval_batch_size, data_sampler=None, num_workers=a.num_workers,
                                drop_last=False),
    }
    for h in ("EvaluationHook", "CheckpointHook"):  # training-only timing; evaluation below
        alg._hooks.remove(alg.hooks_dict.pop(h))
    rec = {"start": [], "end": []}

    class Start(Hook):
        def before_train_step(self, _alg):
            rec["start"].append(time.perf_counter())

    class End(Hook):
        def before_run(self, _alg):
            rec["run0"] = time.perf_counter()

        def after_train_step(self, _alg):
            if cuda:
                torch.cuda.synchronize()
            rec["end"].append(time.perf_counter())

    alg.register_hook(Start(), "Start", "HIGHEST")
    alg.register_hook(End(), "End", "LOWEST")
    t0 = time.perf_counter()
    alg.train()
    t_train = time.perf_counter() - t0
    en = np.asarray(rec["end"])
    n, k = len(en), min(a.warmup_skip, len(en) - 2)
    per_step = a.batch_size * (1 + 2 * a.uratio)
    steady = (n - 1 - k) / (en[-1] - en[k]) if n - 1 > k else float("nan")
    res = {"trainer": "usb", "net": a.net, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
           "torch": torch.__version__, "amp": "fp16" if a.amp else "off", "iters": n, "labelled": len(lb),
           "unlabelled": len(ulb), "data_load_s": round(t_data, 1), "train_s": round(t_train, 2),
           "steady_img_s": round(steady * per_step, 1), "img_per_step": per_step,
           "num_workers": a.num_workers, "threads": torch.get_num_threads()}
    if not a.no_eval:
        res["test_top1_ema"] = round(float(alg.evaluate("eval")["eval/top-1-acc"]), 4)
        alg.model.eval()
        correct = 0
        with torch.no_grad():
            for b in alg.loader_dict["eval"]:
                x = b["x_lb"].cuda() if cuda else b["x_lb"]
                correct += int((alg.model(x)["logits"].argmax(1).cpu() == b["y_lb"]).sum())
        res["test_top1_raw"] = round(correct / len(te_d), 4)
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
