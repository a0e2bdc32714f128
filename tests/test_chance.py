"""No HT preset sits at chance (issue 24): the label-aligned initialisation of the logits
generator, and a few hundred steps of every Omniglot CPU preset on real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from realdata import omniglot_dir

from hypertransformer import presets
from hypertransformer.model import HyperTransformer
from hypertransformer.model.continual import ContinualHyperTransformer
from hypertransformer.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

# Every HT preset of the CPU recipe (docs/results.md); ProtoNet and the CHT have no logits tokens.
CPU_HT_PRESETS = ["omniglot_1shot_cpu", "omniglot_5shot_cpu", "omniglot_1shot_16ch_cpu",
                  "omniglot_1shot_logits_cpu", "omniglot_1shot_semi_cpu", "omniglot_lake",
                  "drawings_1shot_cpu", "drawings_5shot_cpu"]


def first_layer_attention(model: HyperTransformer, labels: torch.Tensor) -> torch.Tensor:
    """The first attention layer's probabilities [heads, n, S] of the logits generator's n weight
    tokens over S sample tokens of the given labels (features zero: the label part alone)."""
    g = model.generators["logits"]
    d, n = g.embedding_dim, g.num_tokens
    samples = F.pad(g.label_embedding[labels], (0, g.width - d))[None]
    weights = F.pad(g.weight_embedding, (0, g.width - d))[None]
    seq = torch.cat([weights, samples], 1)
    attn = g.encoder.layers[0].attention
    q, k = attn._split(attn.q(seq)), attn._split(attn.k(seq))
    probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    return probs[0, :, :n, n:]


@torch.no_grad()
def test_aligned_init_puts_the_label_matching_in_place() -> None:
    """At step 0, weight token j attends to the sample of class j far more than to any other
    sample (measured: 0.21 of its attention on average, 0.015 on each other sample, uniform
    0.025); with the original random initialisation it does not prefer it."""
    torch.manual_seed(0)
    cfg = presets.load("omniglot_1shot_cpu")
    assert cfg.label_aligned_init
    aligned = HyperTransformer(cfg)
    g = aligned.generators["logits"]
    assert torch.equal(g.weight_embedding, g.label_embedding[:cfg.num_labels])
    first = g.encoder.layers[0].attention
    assert torch.equal(first.k.weight, first.q.weight)
    assert not torch.equal(aligned.generators["conv1"].encoder.layers[0].attention.k.weight,
                           aligned.generators["conv1"].encoder.layers[0].attention.q.weight)
    labels = torch.arange(cfg.num_labels)
    own = torch.eye(cfg.num_labels, dtype=torch.bool)
    probs = first_layer_attention(aligned, labels)  # [heads, N, N]
    uniform = 1 / (2 * cfg.num_labels)  # N weight tokens and N samples
    assert probs[:, own].mean() > 5 * uniform
    assert probs[:, own].mean() > 8 * probs[:, ~own].mean()
    random = first_layer_attention(HyperTransformer(cfg.replace(label_aligned_init=False)),
                                   labels)
    assert random[:, own].mean() < 2 * random[:, ~own].mean()


def test_aligned_init_is_refused_where_there_are_no_class_tokens() -> None:
    cht = presets.load("cht_omniglot_task", init_checkpoint="", label_aligned_init=True)
    with pytest.raises(ValueError, match="label_aligned_init .* model_type=cht"):
        ContinualHyperTransformer(cht)
    decoder = presets.load("omniglot_1shot_cpu", use_decoder=True)
    with pytest.raises(ValueError, match="label_aligned_init needs the joint encoder-only"):
        HyperTransformer(decoder)


# Steps and episodes per step of the test's budget: 4 episodes a step instead of the presets'
# 16, so that the eight presets take a few minutes on one thread.
STEPS, EPISODES = 200, 4


@pytest.mark.parametrize("name", CPU_HT_PRESETS)
def test_preset_leaves_chance_within_a_few_hundred_steps(name: str, tmp_path: Path) -> None:
    """The preset as it is, but for 4 episodes per step: after 200 steps (800 episodes) the
    training loss is below ln N and the held-out accuracy at least twice chance.  With the
    original initialisation the logits-only and semi-supervised presets stayed at loss ln N
    for 1,300-2,200 steps of 16 episodes (docs/results/chance_departure)."""
    config = presets.load(name, data_dir=str(omniglot_dir()), episodes_per_step=EPISODES,
                          train_steps=STEPS, steps_between_saves=10**6)
    train(config, tmp_path, progress=False, log_every=STEPS // 2, heldout_episodes=16)
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    n = config.num_labels
    assert last["step"] == STEPS
    assert last["loss"] < math.log(n) - 0.1, last
    assert last["heldout_accuracy"] >= 2 / n, last
