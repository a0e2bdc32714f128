"""Fine-tuning in bf16 against fp32 (issue 25): a 10-way 5-shot classifier of glyphs test
classes from ``drawings_1shot`` loaded in each dtype, 30 queries; the agreement of the two
classifiers and each one's accuracy.  ``python docs/results/cross_domain/tuning/bf16.py``

``fit`` tunes in float32 whatever the dtype.  ``bf16.txt`` also holds the output of one run
made while the tuning still ran inside the model's bf16 autocast (a code state not kept)."""

import numpy as np
import torch

from hypertransformer import load, presets
from hypertransformer.data.registry import load_split


def main() -> None:
    torch.set_num_threads(1)
    classes = load_split(presets.load("glyphs_demo"), "test").classes[:10]
    support = [c[i, ..., 0] for c in classes for i in range(5)]
    labels = [k for k in range(10) for _ in range(5)]
    queries = [c[i, ..., 0] for c in classes for i in (6, 7, 8)]
    truth = np.repeat(np.arange(10), 3)
    models = {d: load("drawings_1shot", dtype=d) for d in ("fp32", "bf16")}
    for steps in (0, 50):
        proba = {d: m.fit(support, labels, tune_steps=steps).predict_proba(queries)
                 for d, m in models.items()}
        agree = (proba["bf16"].argmax(1) == proba["fp32"].argmax(1)).float().mean().item()
        accuracy = {d: float((p.argmax(1).numpy() == truth).mean()) for d, p in proba.items()}
        print(f"tune_steps={steps}: max |p_bf16 - p_fp32| "
              f"{(proba['bf16'] - proba['fp32']).abs().max().item():.3f}, argmax agreement "
              f"{agree:.2f}, accuracy fp32 {accuracy['fp32']:.3f} bf16 {accuracy['bf16']:.3f}")


if __name__ == "__main__":
    main()
