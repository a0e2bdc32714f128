"""The sweep that chose fit's fine-tuning (issue 25), on the cross-domain validation part.

    python docs/results/cross_domain/tuning/sweep.py MODEL DOMAINS SHOTS CONFIGS [TASKS]

DOMAINS and SHOTS comma-separated (``digits,glyphs`` ``5,10``); CONFIGS comma-separated
``steps:lr:shift[:what]``: Adam steps, learning rate, random shift of the support images by up
to ``shift`` pixels at each step (0: none), and what is tuned (``all`` generated weights, ``bn``
the BatchNorm scales and shifts and the logits, ``head`` the logits only).  10-way tasks, 10
queries per class, TASKS tasks (50).  Each config starts from ``fit(..., tune_steps=0)``.
"""

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
import cross_domain as cd  # noqa: E402

import hypertransformer  # noqa: E402

KEEP = {"all": ("weight", "bias", "gamma", "beta"), "bn": ("gamma", "beta"), "head": ()}


def shift(x: torch.Tensor, m: int) -> torch.Tensor:
    if m == 0:
        return x
    padded = F.pad(x, (m, m, m, m), value=float(x.min()))
    d = torch.randint(0, 2 * m + 1, (len(x), 2))
    return torch.stack([padded[i, :, a:a + x.shape[2], b:b + x.shape[3]]
                        for i, (a, b) in enumerate(d.tolist())])


def tuned(ht, s, y, q, steps: int, lr: float, m: int, what: str) -> np.ndarray:  # noqa: ANN001
    clf = ht.fit(s, y, ink="light", tune_steps=0)  # the generated CNN; tuned below
    cnn = clf.cnn
    if steps:
        x = clf.preprocessing(s, "light")
        params = [getattr(layer, n) for layer in cnn.layers for n in KEEP[what]
                  if getattr(layer, n) is not None]
        params += [cnn.logits_weight, cnn.logits_bias]
        for t in params:
            t.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            loss = F.cross_entropy(cnn.batch_forward(shift(x, m)), torch.tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        for t in params:
            t.requires_grad_(False)
        cnn.fit_statistics(x)
    return np.asarray(clf.predict(q, "light"))


def main() -> None:
    torch.set_num_threads(1)
    name, domains, shots = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
    configs = [(c.split(":") + ["all"])[:4] for c in sys.argv[4].split(",")]
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    ht = hypertransformer.load(name, dtype="fp32")
    for dom in domains:
        classes = cd.domain(dom, "val", "../shared/data/omniglot")
        for k in map(int, shots):
            drawn = cd.tasks(classes, count, 10, k, 10, seed=k)
            nc = [(cd.pixels(True)(s, sy, q) == np.asarray(qy)).mean() for s, sy, q, qy in drawn]
            print(f"{dom} {k}-shot pixels NC {100 * np.mean(nc):.1f}", flush=True)
            for steps, lr, m, what in configs:
                t0 = time.perf_counter()
                acc = np.array([(tuned(ht, s, sy, q, int(steps), float(lr), int(m), what)
                                 == np.asarray(qy)).mean() for s, sy, q, qy in drawn])
                half = 1.96 * acc.std(ddof=1) / math.sqrt(len(acc))
                print(f"{dom} {k}-shot steps={steps} lr={lr} shift={m} {what}: "
                      f"{100 * acc.mean():.1f} ± {100 * half:.1f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
