"""Which BatchNorm statistics a generated classifier should use for its queries (docs/use.md).

The generated CNN normalises with batch statistics; in training, a query batch is normalised
with its own statistics (60 queries, 3 of each of the 20 classes, for omniglot_1shot).  A user
classifies one image or a few.  On the test classes of a trained checkpoint this prints the
query accuracy of each choice, over the same episodes:

* ``query batch``: the query batch's own statistics, as trained: a balanced batch of 3 queries
  per class, and for N-way K-shot also batches of 2 and 5 consecutive queries (and how often
  a prediction changes from the full batch).  One query alone is impossible: the last conv
  layer's output is 1x1 (omniglot_1shot), one value per channel, which BatchNorm refuses;
* ``support statistics``: the statistics of the support pass, stored in the classifier
  (:class:`hypertransformer.inference.GeneratedCNN`): independent of the other queries;
* ``all N logits``: the same, but the argmax over all N logits, the unused labels' included
  (what dropping them gains);

for N-way K-shot (the trained setting), more shots, and fewer classes than N.

    python benchmarks/batchnorm_statistics.py --checkpoint runs/omniglot_1shot \\
        --data-dir ../shared/data/omniglot --episodes 300
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from hypertransformer.data.registry import load_split
from hypertransformer.data.sampler import EpisodeSampler
from hypertransformer.inference import GeneratedCNN, load_few_shot
from hypertransformer.model import HyperTransformer


def support_statistics_logits(model: HyperTransformer, sx: Tensor, sy: Tensor, qx: Tensor,
                              num_classes: int) -> Tensor:
    """Query logits [T, Q, n] of each task's classifier with stored support statistics."""
    weights = model.generate(sx, sy)
    out = []
    for t in range(sx.shape[0]):
        cnn = GeneratedCNN.from_generated(model, weights, num_classes, task=t)
        cnn.fit_statistics(sx[t])
        out.append(cnn(qx[t]))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an omniglot_1shot log dir or file")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ht = load_few_shot(args.checkpoint)
    model, cfg = ht.model, ht.config.replace(data_dir=args.data_dir)
    split = load_split(cfg, "test")
    n, q = cfg.num_labels, cfg.samples_cnn
    print(f"{args.checkpoint}: {n}-way {cfg.shots}-shot, {args.episodes} test episodes, "
          f"{q} queries each")

    def sampler(**changes: int) -> EpisodeSampler:
        return EpisodeSampler.from_config(split, cfg.replace(**changes), train=False, seed=0)

    with torch.no_grad():
        batch = sampler().sample(args.episodes)
        weights = model.generate(batch.support_x, batch.support_y)
        full = model.classify(batch.query_x, weights).argmax(-1)
        for size in (2, 5):
            pred = torch.cat([model.classify(batch.query_x[:, i:i + size], weights).argmax(-1)
                              for i in range(0, q, size)], dim=1)
            print(f"  query batch of {size}: {(pred == batch.query_y).float().mean():.4f} "
                  f"({(pred != full).float().mean():.1%} of the predictions differ from the "
                  f"batch of {q})")

        print(f"{'classes':>8}{'shots':>6}{'query batch':>13}{'support stats':>15}"
              f"{'all N logits':>14}")
        for ways, shots in [(n, cfg.shots), (n, 2), (n, 5), (n, 10), (10, 1), (5, 1), (5, 5),
                            (2, 1), (2, 5)]:
            b = sampler(num_labels=ways, samples_transformer=ways * shots,
                        samples_cnn=3 * ways).sample(args.episodes)
            weights = model.generate(b.support_x, b.support_y)
            in_batch = model.classify(b.query_x, weights)[..., :ways]
            stored = support_statistics_logits(model, b.support_x, b.support_y, b.query_x, n)
            accuracy = [(lg.argmax(-1) == b.query_y).float().mean().item()
                        for lg in (in_batch, stored[..., :ways], stored)]
            print(f"{ways:>8}{shots:>6}{accuracy[0]:>13.4f}{accuracy[1]:>15.4f}"
                  f"{accuracy[2]:>14.4f}")


if __name__ == "__main__":
    main()
