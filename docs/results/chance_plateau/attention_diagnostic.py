"""Where the logits generator's weight tokens attend: per transformer layer, the share of
attention on the support samples and on the support sample of the token's own class, on 8
validation tasks (docs/results/chance_plateau/README.md).

Usage: python attention_diagnostic.py fresh:<preset> | <checkpoint> ...
"""

import math
import sys

import torch

from hypertransformer import presets
from hypertransformer.data.registry import load_split
from hypertransformer.data.sampler import EpisodeSampler
from hypertransformer.model import build_model
from hypertransformer.model.transformer import MultiHeadAttention
from hypertransformer.training.checkpoint import model_from_checkpoint

DATA = "../shared/data/omniglot"
recorded: list[torch.Tensor] = []
attend = MultiHeadAttention.forward


def recording_forward(self, x, kv, key_mask):
    q, k = self._split(self.q(x)), self._split(self.k(kv))
    recorded.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1))
    return attend(self, x, kv, key_mask)


MultiHeadAttention.forward = recording_forward

for source in sys.argv[1:]:
    if source.startswith("fresh:"):
        cfg = presets.load(source.removeprefix("fresh:"), data_dir=DATA)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
    else:
        model, cfg, _ = model_from_checkpoint(source)
        cfg = cfg.replace(data_dir=DATA)
    batch = EpisodeSampler.from_config(load_split(cfg, "val"), cfg, train=False,
                                       seed=0).sample(8)
    recorded.clear()
    with torch.no_grad():
        weights = model.generate(batch.support_x, batch.support_y, batch.support_mask)
        logits = model.classify(batch.query_x, weights)
    n, y = cfg.num_labels, batch.support_y
    accuracy = (logits.argmax(-1) == batch.query_y).float().mean().item()
    print(f"== {source}: query acc {accuracy:.3f}")
    own = (y[:, None, None, :] == torch.arange(n)[None, None, :, None]).float()
    # The logits generator runs last: its layers are the last num_layers records.
    for i, a in enumerate(recorded[-cfg.num_layers:]):
        rows = a[:, :, :n, :]  # [T, heads, weight tokens, all tokens]; samples after n
        print(f"  layer {i}: weight->samples mass {rows[..., n:].sum(-1).mean():.3f}, "
              f"->own-class sample {(rows[..., n:] * own).sum(-1).mean():.4f} "
              f"(uniform own {1 / (n + y.shape[1]):.4f}), "
              f"max row entry {rows.max(-1).values.mean():.3f}")
