"""``BatchSource``: the batch of step k, a pure function of (seed, k, rank), so a resumed run (every rank
of it) continues exactly where it stopped.

A labelled stream of B images and an unlabelled stream of mu*B (``IndexStream``: a seeded permutation
per epoch), the views the algorithm asks for (batched uint8 augmentation, then normalised floats on the
device), and CTAugment's probe: ReMixMatch's strong policy is learned from how well the EMA model
predicts labelled images under uniformly random policies, one probe batch every step.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import dist
from ..algorithms import Batch
from ..data.ctaugment import CTAugment
from ..data.simclr_aug import simclr_view
from ..data.stream import IndexStream, Unlabelled
from ..data.transforms import make_view, to_float, weak
from .setup import Setup


def view_kind(name: str) -> str:
    """A view name's augmentation: "weak", "strong", "simclr", or "weak2" / "strong_3" / "simclr2" by prefix."""
    return next((k for k in ("strong", "simclr") if name.startswith(k)), "weak")


class BatchSource:
    def __init__(self, s: Setup):
        cfg, ds, split = s.cfg, s.ds, s.split
        self.s, self.seed, self.alg = s, cfg.run.seed, cfg.algorithm
        # uint8 tensors in memory; unlabelled = train[unlabelled] + extra (hidden label -1), the extra images
        # read per batch where they lie (in memory, memory-mapped, or a pool's cache file on disk)
        train_x = torch.from_numpy(ds.train_x)
        self.x_l = train_x[torch.from_numpy(split.labelled)]
        self.y_l = torch.from_numpy(ds.train_y[split.labelled]).long()
        self.x_u = Unlabelled(train_x[torch.from_numpy(split.unlabelled)], ds.extra_x)
        y_u = torch.from_numpy(ds.train_y[split.unlabelled]).long()
        if ds.extra_x is not None:
            y_u = torch.cat([y_u, torch.full((len(ds.extra_x),), -1, dtype=torch.long)])
        self.y_u_hidden = y_u  # what the pseudo-labels are scored against; the algorithm never sees it
        B = cfg.train.batch_size
        self.stream_l = IndexStream(len(self.x_l), B, cfg.run.seed, salt=1)
        self.stream_u = IndexStream(len(self.x_u), B * cfg.train.mu, cfg.run.seed, salt=2) if self.alg.views_u \
            else None
        d, self.hflip = cfg.data, ds.hflip  # load_dataset already applied data.hflip when set
        # FixMatch's reference appends a cutout to its CTA strong views, ReMixMatch's does not (cta_cutout)
        self.cta = CTAugment(cutout=getattr(self.alg, "cta_cutout", True)).to(s.rt.device) \
            if d.strong == "ctaugment" else None
        self.view_fns = {
            "weak": make_view(d.weak, hflip=self.hflip, pad=d.crop_pad, n=d.randaugment_n, cutout_frac=d.cutout),
            "strong": self._cta_view if self.cta is not None else
            make_view(d.strong, hflip=self.hflip, pad=d.crop_pad, n=d.randaugment_n, cutout_frac=d.cutout),
            "simclr": lambda x, gen: simclr_view(x, gen, hflip=self.hflip, scale=(d.simclr_crop_min, 1.0),
                                                 s=d.simclr_strength),
        }

    @property
    def has_unlabelled(self) -> bool:
        return self.stream_u is not None

    def _cta_view(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.cta(weak(x, gen, hflip=self.hflip, pad=self.s.cfg.data.crop_pad), gen)

    def views(self, x: torch.Tensor, names: tuple, gen: torch.Generator) -> dict:
        """uint8 (N, C, H, W) on the device -> {view name: normalised float view, in the model's memory format}."""
        rt, ds = self.s.rt, self.s.ds
        return {n: rt.to_input(to_float(self.view_fns[view_kind(n)](x, gen), ds.mean, ds.std)) for n in names}

    def batch(self, step: int) -> tuple[Batch, torch.Tensor | None]:
        """The batch of ``step`` for this rank, and the hidden labels of its unlabelled images (None without)."""
        rt, dd = self.s.rt, self.s.rt.dist
        seq = [self.seed, step] + ([dd.rank] if dd.enabled else [])  # rank 0 of 1 = the single process
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seq).generate_state(1)[0]))
        il = torch.from_numpy(self.stream_l.batch(step, dd.rank, dd.world))
        raw_l, y_l = self.x_l[il].to(rt.device), self.y_l[il].to(rt.device)  # uint8 (B, C, H, W), (B,)
        batch = Batch(self.views(raw_l, self.alg.views_l, gen), y_l, step=step)
        hidden = None
        if self.stream_u is not None:
            iu = torch.from_numpy(self.stream_u.batch(step, dd.rank, dd.world))
            batch.x_u = self.views(self.x_u.take(iu).to(rt.device), self.alg.views_u, gen)
            hidden = self.y_u_hidden[iu].to(rt.device)
        if self.cta is not None:
            self._probe_cta(raw_l, y_l, gen)
        return batch, hidden

    @torch.no_grad()
    def _probe_cta(self, raw_l: torch.Tensor, y_l: torch.Tensor, gen: torch.Generator) -> None:
        """The references probe weakly augmented labelled images (flip + crop), as the strong views start from."""
        s, ds = self.s, self.s.ds
        x_probe, policy = self.cta.probe(weak(raw_l, gen, hflip=self.hflip, pad=s.cfg.data.crop_pad), gen)
        model = s.eval_model
        was = model.training
        model.eval()
        with s.rt.autocast():
            probs = torch.softmax(model(s.rt.to_input(to_float(x_probe, ds.mean, ds.std))).logits.float(), -1)
        model.train(was)
        self.cta.update(policy, probs, y_l)
        dist.all_reduce_([self.cta.weights])
