"""Digits binarised at a threshold before fit (issue 25; validation part, 30 tasks of 10-way):
the HT (``fit`` with 50 tuning steps, the rule when this ran) against raw-pixel nearest
centroid on the same images.  ``python docs/results/cross_domain/tuning/binarise.py``"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
import cross_domain as cd  # noqa: E402

import hypertransformer  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    ht = hypertransformer.load("drawings_1shot", dtype="fp32")
    classes = cd.digits("val")
    for k in (1, 10):
        drawn = cd.tasks(classes, 30, 10, k, 10, seed=k)
        for th in (None, 64, 128):
            def f(ims: list, th: int | None = th) -> list:
                return ims if th is None else [((im > th) * 255).astype(np.uint8) for im in ims]
            acc = [(np.asarray(ht.fit(f(s), sy, ink="light", tune_steps=50).predict(f(q), "light"))
                    == np.asarray(qy)).mean() for s, sy, q, qy in drawn]
            nc = [(cd.pixels(True)(f(s), sy, f(q)) == np.asarray(qy)).mean()
                  for s, sy, q, qy in drawn]
            print(k, th, f"HT {100 * np.mean(acc):.1f} pixels NC {100 * np.mean(nc):.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
