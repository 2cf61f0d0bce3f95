"""t-SNE of test-set features (the penultimate layer, `model.encode`) from a run's checkpoint, as in
the Pseudo-Label paper's figure (Lee 2013): does the unlabelled data make the classes separate?"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.transforms import to_float
from ..errors import UserError
from ..evaluate import LoadedRun, load_checkpoint


@dataclass
class Embedding:
    points: np.ndarray  # (n, 2)
    labels: np.ndarray  # (n,) true classes
    classes: list[str]
    checkpoint: str  # file name the features came from (best.pt, or last.pt as fall-back)
    step: int
    weights: str  # "EMA" or "raw"


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to n indices, each class in proportion to its share of ``labels`` (largest remainders), seeded;
    sorted. Every present class keeps at least one point when n allows."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.minimum(np.maximum(np.floor(exact).astype(int), 1 if n >= len(classes) else 0), counts)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):  # hand out what rounding left over
        if take.sum() >= n:
            break
        take[i] += take[i] < counts[i]
    while take.sum() > n:  # the at-least-one rule can overshoot by a few: trim the largest
        take[np.argmax(take)] -= 1
    idx = [rng.choice(np.flatnonzero(labels == c), t, replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(idx))


@torch.no_grad()
def features(run: LoadedRun, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, D) float32 penultimate features of the run's evaluation model."""
    out = []
    mean, std = run.ds.mean, run.ds.std
    for i in range(0, len(x), batch_size):
        xb = run.rt.to_input(to_float(torch.from_numpy(x[i:i + batch_size]).to(run.rt.device), mean, std))
        with run.rt.autocast():
            out.append(run.model.encode(xb).float().cpu())  # (b, D)
    return torch.cat(out).numpy()


def embed(feats: np.ndarray, seed: int) -> np.ndarray:
    """PCA to 50 dimensions (denoises and speeds t-SNE up, as is standard), then 2-D t-SNE."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    feats = np.asarray(feats, dtype=np.float64)
    n, d = feats.shape
    if d > 50 and n > 50:
        feats = PCA(n_components=50, random_state=seed).fit_transform(feats)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(feats)


def tsne_of_run(run_dir: Path, max_points: int = 2000, seed: int = 0) -> Embedding:
    """Features of up to max_points test images (stratified, seeded) from best.pt's EMA weights, or
    last.pt's when best.pt is missing or damaged. Raises UserError (no checkpoint, dataset missing)."""
    errors = []
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            try:
                loaded = load_checkpoint(run_dir / name)
                break
            except UserError as e:
                errors.append(str(e))
    else:
        raise UserError(errors[0] if errors else f"{str(run_dir)!r} has no checkpoint yet (best.pt / last.pt)")
    ds = loaded.ds
    x_all, y_all = ds.test_x, ds.test_y
    if len(y_all) == 0:  # data without a test set: the validation hold-out the run was measured on
        val = np.asarray(json.loads((loaded.path.parent / "split.json").read_text())["val"], np.int64)
        x_all, y_all = ds.train_x[val], ds.train_y[val]
    idx = stratified_sample(y_all, max_points, seed)
    feats = features(loaded, x_all[idx], loaded.cfg.train.eval_batch_size)
    if len(idx) < 5:
        part = "test" if len(ds.test_y) else "validation"
        raise UserError(f"t-SNE needs at least 5 {part} images, the run has {len(idx)}")
    return Embedding(embed(feats, seed), np.asarray(y_all[idx]), list(ds.classes), loaded.path.name,
                     int(loaded.ckpt["step"]), "EMA" if loaded.ckpt.get("ema") is not None else "raw")
