"""The HT's comparisons of issue 13: the ProtoNet on 20-way episodes evaluated by the HT
protocol, the "logits layer only" HT, the semi-supervised preset and the CPU recipes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_continual import toy_dataset

from hypertransformer import presets
from hypertransformer.data.sampler import EpisodeSampler
from hypertransformer.evaluation.evaluator import evaluate_model
from hypertransformer.evaluation.protocol import sample_tasks
from hypertransformer.model import HyperTransformer, ProtoNet
from hypertransformer.model.continual import EpisodeClassifier, TaskStream

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "hypertransformer.cli"]
# Shrinks a 20-way Omniglot preset to seconds on the built-in glyphs.
GLYPHS = ["--set", "train_dataset=glyphs:train", "--set", "test_dataset=glyphs:test",
          "--set", "num_labels=5", "--set", "samples_transformer=5", "--set", "samples_cnn=10",
          "--set", "embedding_dim=16", "--set", "num_layers=1", "--set", "shuffle_labels_seed=0"]

pytestmark = pytest.mark.usefixtures("one_thread")


def protonet(**overrides: object) -> ProtoNet:
    torch.manual_seed(0)
    cfg = presets.load("protonet_omniglot_1shot", num_labels=4, samples_transformer=4,
                       samples_cnn=8, **overrides)
    return ProtoNet(cfg).eval()


def test_the_protonet_classifies_a_query_by_its_nearest_support_mean():
    """EpisodeClassifier: logits are −‖f(x) − c_k‖², c_k the mean embedding of class k's
    support (BatchNorm statistics of the support batch), queries their own batch."""
    model = protonet(unlabeled_samples_per_class=0)
    cfg = model.config.replace(samples_transformer=8)  # 2 shots: the mean matters
    batch = EpisodeSampler.from_config(toy_dataset(), cfg, train=False, seed=1).sample(3)
    episodes = EpisodeClassifier(model)
    with torch.no_grad():
        logits = episodes.classify(batch.query_x, episodes.generate(
            batch.support_x, batch.support_y, batch.support_mask))
        support = model.embed(batch.support_x)
        query = model.embed(batch.query_x)
    assert logits.shape == (3, 8, 4)
    for t in range(3):
        means = torch.stack([support[t][batch.support_y[t] == k].mean(0) for k in range(4)])
        expected = -(query[t][:, None] - means[None]).square().sum(-1)
        torch.testing.assert_close(logits[t], expected, rtol=1e-5, atol=1e-5)


def test_a_one_task_sequence_is_evaluated_as_an_episode_like_the_continual_stream():
    """The HT protocol on a prototype model equals a one-task TaskStream on the same tasks."""
    model = protonet()
    cfg = model.config
    # fp32: the loop below runs without autocast
    result = evaluate_model(EpisodeClassifier(model), cfg.replace(dtype="fp32"), toy_dataset(),
                            num_tasks=6,
                            num_batches=2, batch_size=8, seed=3)
    sampler = EpisodeSampler.from_config(toy_dataset(), cfg.replace(samples_cnn=8),
                                         train=False, seed=3)
    batch = sample_tasks(sampler, 0, 6, 2, seed=3)
    stream = TaskStream(model, scenario="task")
    with torch.no_grad():
        stream.learn(batch.support_x, batch.support_y, batch.support_mask)
        accuracy = sum((stream.logits(batch.query_x[:, None, b * 8:(b + 1) * 8])[:, 0]
                        .argmax(-1) == batch.query_y[:, b * 8:(b + 1) * 8]).float().mean(1)
                       for b in range(2)) / 2
    assert result.task_accuracies == pytest.approx(accuracy.tolist())


def test_protonet_preset_trains_and_evaluate_runs_the_ht_protocol(tmp_path):
    log = tmp_path / "pn"
    done = subprocess.run(CLI + ["train", "--preset", "protonet_omniglot_1shot", "--log-dir",
                                 str(log), "--steps", "3", "--log-every", "1", "--no-progress",
                                 "--nproc", "1", *GLYPHS],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = subprocess.run(CLI + ["evaluate", "--log-dir", str(log), "--tasks", "5",
                                "--batches", "3", "--batch-size", "10", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["model_type"] == "protonet" and "accuracy_matrix" not in record
    assert (record["num_tasks"], record["num_batches"], record["batch_size"]) == (5, 3, 10)
    assert len(record["task_accuracies"]) == 5 and record["chance"] == pytest.approx(0.2)
    assert "test accuracy" in out.stdout
    assert (log / "eval" / f"test-{record['step']:08d}.json").exists()


def test_a_continual_checkpoint_evaluated_on_one_task_sequences_gets_its_own_record(tmp_path):
    log = tmp_path / "cht"
    done = subprocess.run(CLI + ["train", "--preset", "cht_glyphs_demo", "--log-dir", str(log),
                                 "--steps", "1", "--no-progress", "--nproc", "1",
                                 "--set", "embedding_dim=16", "--set", "num_layers=1",
                                 "--set", "samples_cnn=10", "--set", "cht_tasks=2"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = subprocess.run(CLI + ["evaluate", "--log-dir", str(log), "--tasks", "3",
                                "--batches", "2", "--batch-size", "10", "--sequence-length",
                                "1", "--json"], capture_output=True, text=True, timeout=600,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert "accuracy_matrix" not in record and record["num_batches"] == 2
    assert (log / "eval" / f"test-{record['step']:08d}-1tasks.json").exists()


def test_logits_only_generates_the_logits_layer_and_trains_every_conv_layer():
    cfg = presets.load("omniglot_1shot_logits_cpu")
    model = HyperTransformer(cfg)
    assert list(model.generators) == ["logits"]
    assert [layer.generated for layer in model.conv_layers] == [False] * 4
    full = HyperTransformer(presets.load("omniglot_1shot_cpu"))
    assert list(full.generators) == ["conv1", "conv2", "conv3", "conv4", "logits"]
    # the trained conv layers take part in the generated CNN: their gradient is not zero
    small = cfg.replace(num_labels=4, samples_transformer=4, samples_cnn=8, embedding_dim=16,
                        num_layers=1)
    model = HyperTransformer(small)
    batch = EpisodeSampler.from_config(toy_dataset(), small, train=True, seed=0).sample(2)
    model.batch_loss(batch).loss.backward()
    for layer in model.conv_layers:
        grads = [p.grad for p in layer.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_semi_supervised_preset_has_unlabelled_support_and_trains(tmp_path):
    cfg = presets.load("omniglot_1shot_semi_cpu")
    assert (cfg.num_labels, cfg.shots, cfg.unlabeled_samples_per_class) == (20, 1, 2)
    small = cfg.replace(num_labels=4, samples_transformer=12, samples_cnn=8)
    batch = EpisodeSampler.from_config(toy_dataset(), small, train=False, seed=0).sample(2)
    labels = batch.support_y
    assert ((labels == 4).sum(1) == 8).all()  # 2 unlabelled (label N) per class
    for k in range(4):
        assert ((labels == k).sum(1) == 1).all()
    assert batch.support_mask.all()  # removal is for training only
    log = tmp_path / "semi"
    done = subprocess.run(CLI + ["train", "--preset", "omniglot_1shot_semi_cpu", "--log-dir",
                                 str(log), "--steps", "2", "--no-progress", "--nproc", "1",
                                 *GLYPHS, "--set", "samples_transformer=15"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["omniglot_1shot_cpu", "omniglot_5shot_cpu",
                                  "omniglot_1shot_16ch_cpu"])
def test_cpu_recipes_keep_the_papers_model_and_data(name):
    """Only the optimiser, schedule, batch and the logits generator's initialisation
    (label_aligned_init, issue 24; the architecture is the same) differ from the original
    preset."""
    original = "omniglot_5shot" if "5shot" in name else "omniglot_1shot"
    cpu, paper = presets.load(name).to_dict(), presets.load(original).to_dict()
    changed = {k for k in cpu if cpu[k] != paper[k]}
    recipe = {"optimizer", "learning_rate", "episodes_per_step", "learning_rate_decay_rate",
              "learning_rate_decay_steps", "train_steps", "steps_between_saves",
              "label_aligned_init"}
    widths = {"default_num_channels", "num_layerwise_features"} if "16ch" in name else set()
    assert changed == recipe | widths
    assert cpu["default_num_channels"] == (16 if "16ch" in name else 8)
