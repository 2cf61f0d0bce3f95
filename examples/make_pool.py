"""Build a folder as a user has one from a labelled image folder (e.g. the CIFAR-10 JPEG archive).

    python examples/make_pool.py --src /tmp/cifar10-jpeg --out data/my_pool \
        --labelled-per-class 25 --unlabelled 20000 --new 1000

writes
    OUT/labelled/<class>/*       --labelled-per-class images of each class (from SRC/train)
    OUT/unlabelled/*             --unlabelled images in one flat folder, renamed: no class in the name
    OUT/new_images/*             --new images of SRC/test, renamed, to predict after training
    OUT/new_images_answers.csv   their true classes (path,label), to score the predictions
    OUT/manifest.csv             the same labelled + unlabelled images as a path,label manifest
No test set: semisup holds out part of the labelled images for validation. Seeded (--seed); files are copied.
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np


def files_by_class(d: Path) -> dict[str, list[Path]]:
    return {c.name: sorted(p for p in c.iterdir() if p.is_file()) for c in sorted(d.iterdir()) if c.is_dir()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="a folder with train/<class>/* and test/<class>/*")
    ap.add_argument("--out", required=True)
    ap.add_argument("--labelled-per-class", type=int, default=25)
    ap.add_argument("--unlabelled", type=int, default=20000)
    ap.add_argument("--new", type=int, default=1000, help="held-back test images to predict")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    src, out, rng = Path(a.src), Path(a.out), np.random.default_rng(a.seed)
    if out.exists():
        raise SystemExit(f"{out} exists; choose another --out or remove it")
    train = files_by_class(src / "train")
    rows, rest = [], []
    for c, files in train.items():
        perm = rng.permutation(len(files))
        (out / "labelled" / c).mkdir(parents=True)
        for i in perm[:a.labelled_per_class]:
            dst = out / "labelled" / c / files[i].name
            shutil.copyfile(files[i], dst)
            rows.append((dst.relative_to(out).as_posix(), c))
        rest += [files[i] for i in perm[a.labelled_per_class:]]
    (out / "unlabelled").mkdir()
    for n, i in enumerate(rng.permutation(len(rest))[:a.unlabelled]):
        dst = out / "unlabelled" / f"u{n:06d}{rest[i].suffix}"
        shutil.copyfile(rest[i], dst)
        rows.append((dst.relative_to(out).as_posix(), ""))
    test = [(p, c) for c, files in files_by_class(src / "test").items() for p in files]
    (out / "new_images").mkdir()
    answers = []
    for n, i in enumerate(rng.permutation(len(test))[:a.new]):
        p, c = test[i]
        dst = out / "new_images" / f"n{n:05d}{p.suffix}"
        shutil.copyfile(p, dst)
        answers.append((dst.as_posix(), c))
    for name, lines in (("manifest.csv", rows), ("new_images_answers.csv", answers)):
        with open(out / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(lines)
    print(f"{out}: {sum(1 for _, c in rows if c)} labelled in {len(train)} classes, "
          f"{sum(1 for _, c in rows if not c)} unlabelled, {len(answers)} new images to predict")


if __name__ == "__main__":
    main()
