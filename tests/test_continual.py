"""The Continual HyperTransformer (SPEC §7): weight feedback, stored prototypes, scenarios,
batching, the sequence sampler, training and the continual evaluation end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hypertransformer import presets
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.sampler import EpisodeSampler, SequenceBatch, SequenceSampler
from hypertransformer.evaluation.continual import evaluate_continual, summarize
from hypertransformer.evaluation.plot import plot_log_dir
from hypertransformer.model import (
    ContinualHyperTransformer,
    HyperTransformer,
    MergedHyperTransformer,
    ProtoNet,
    TaskStream,
    build_model,
)
from hypertransformer.model.continual import squared_distances
from hypertransformer.training import train

REPO = Path(__file__).resolve().parents[1]


def small(scenario: str = "task", **overrides: object):
    """A small 4-way 1-shot CHT on 28-px images: the SPEC §7 model (raw blocks fed back,
    zeros at t = 0; the presets' residual, warm-started CHT is ``cht_residual=True``)."""
    base = dict(num_labels=4, samples_transformer=4, samples_cnn=8, embedding_dim=16,
                num_layers=1, heads=1, default_num_channels=4, num_layerwise_features=4,
                shared_features_dim=8, prototype_dim=6, cht_tasks=3, cht_scenario=scenario,
                data_dir=None, cht_residual=False, init_checkpoint="")
    base.update(overrides)
    return presets.load("cht_omniglot_task", **base)


def toy_dataset(classes: int = 30, samples: int = 6, seed: int = 0) -> ClassDataset:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (samples, 28, 28, 1), dtype=np.uint8) for _ in range(classes)]
    return ClassDataset("toy", images, [f"c{i}" for i in range(classes)])


def sequences(cfg, count: int = 2, tasks: int | None = None, seed: int = 0) -> SequenceBatch:
    sampler = SequenceSampler.from_config(toy_dataset(), cfg, train=False, seed=seed,
                                          num_tasks=tasks)
    return sampler.sample(count)


def run(model, batch: SequenceBatch, recompute: bool | None = None) -> list[torch.Tensor]:
    """Logits of tasks 0..t after each task t."""
    stream = TaskStream(model, recompute)
    out = []
    for t in range(batch.num_tasks):
        task = batch.task(t)
        stream.learn(task.support_x, task.support_y, task.support_mask)
        out.append(stream.logits(batch.query_x[:, :t + 1]))
    return out


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


def test_first_task_is_the_ht_with_a_prototype_head():
    cfg = small()
    model = ContinualHyperTransformer(cfg).eval()
    ht = HyperTransformer(cfg, num_outputs=cfg.prototype_dim).eval()
    ht.load_state_dict(model.ht.state_dict())
    batch = sequences(cfg, tasks=1)
    task = batch.task(0)
    with torch.no_grad():
        weights = ht.generate(task.support_x, task.support_y)
        support = ht.classify(task.support_x, weights)  # [T, S, D] embeddings
        queries = ht.classify(task.query_x, weights)
        onehot = torch.nn.functional.one_hot(task.support_y, cfg.num_labels).float()
        prototypes = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)
        expected = -((queries[:, :, None] - prototypes[:, None]) ** 2).sum(-1)
        logits = run(model, batch)[0][:, 0]
    assert logits.shape == (2, cfg.samples_cnn, cfg.num_labels)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_residual_weights_start_as_the_learned_initial_weights_for_every_task():
    # cht_residual: θ_t = θ_{t−1} + α·G; with α = 0 every task's weights are θ_{−1} (a
    # trained CNN, the same for every support set) until α moves
    cfg = small(cht_residual=True, cht_residual_scale=0.0)
    model = ContinualHyperTransformer(cfg).eval()
    batch = sequences(cfg, tasks=2)
    with torch.no_grad():
        w0 = model.generate(batch.support_x[:, 0], batch.support_y[:, 0])
        w1 = model.generate(batch.support_x[:, 1], batch.support_y[:, 1], previous=w0)
        for name, initial in model.initial.items():
            for w in (w0, w1):
                torch.testing.assert_close(w.blocks[name], initial.expand_as(w.blocks[name]))
        for scale in model.step_scale.values():
            scale.fill_(0.5)
        moved = model.generate(batch.support_x[:, 1], batch.support_y[:, 1], previous=w0)
    for name in moved.blocks:  # α ≠ 0: the support set and θ_{t−1} write an update
        assert not torch.allclose(moved.blocks[name], w0.blocks[name])
    # the update reaches α and the generator through the loss
    model.train()
    model.batch_loss(batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in [*model.step_scale.values(), *model.initial.values()])


@pytest.mark.parametrize("feedback", ["raw", "normalized", "none"])
def test_what_the_weight_tokens_carry(feedback):
    cfg = small(cht_feedback=feedback)
    model = ContinualHyperTransformer(cfg).eval()
    batch = sequences(cfg, tasks=2)
    t0, t1 = batch.task(0), batch.task(1)
    with torch.no_grad():
        w0 = model.generate(t0.support_x, t0.support_y)
        fresh = model.generate(t1.support_x, t1.support_y)
        fed = model.generate(t1.support_x, t1.support_y, previous=w0)
        other = model.generate(t1.support_x, t1.support_y,
                               previous=model.generate(t0.support_x.flip(-1), t0.support_y))
        scaled = model.generate(t1.support_x, t1.support_y, previous=type(w0)(
            w0.layers, w0.shared_features, {k: 3 * v + 1 for k, v in w0.blocks.items()}))
    assert set(fed.blocks) == {"conv1", "conv2", "conv3", "conv4", "logits"}
    for name in fed.blocks:
        if feedback == "none":  # nothing fed back: θ_1 from S_1 alone
            torch.testing.assert_close(fed.blocks[name], fresh.blocks[name])
            continue
        # the previous weights change the next ones
        assert not torch.allclose(fed.blocks[name], fresh.blocks[name])
        assert not torch.allclose(fed.blocks[name], other.blocks[name])
        if feedback == "normalized":  # blind to the scale and offset of each block
            torch.testing.assert_close(scaled.blocks[name], fed.blocks[name], rtol=1e-4,
                                       atol=1e-4)


def test_feedback_options_are_checked():
    with pytest.raises(ValueError, match="unknown cht_feedback"):
        build_model(small(cht_feedback="projected"))
    for model_type in ("merged_ht", "protonet"):
        with pytest.raises(ValueError, match="feeds no weights back"):
            build_model(small(model_type=model_type, cht_residual=True))


def test_gradients_reach_the_first_task_through_the_chain():
    cfg = small()
    model = ContinualHyperTransformer(cfg)
    batch = sequences(cfg, tasks=2)
    support0 = batch.support_x[:, 0].clone().requires_grad_(True)
    stream = TaskStream(model)
    stream.learn(support0, batch.support_y[:, 0])
    stream.learn(batch.support_x[:, 1], batch.support_y[:, 1])
    # Only task 1's queries, classified with θ_1 against task 1's prototypes: θ_0 (and so
    # the first support set and generators' parameters) matters only through the feedback.
    logits = stream.logits(batch.query_x[:, :2])[:, 1]
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y[:, 1].flatten()
                                      ).backward()
    assert support0.grad is not None and support0.grad.abs().sum() > 0


def test_stored_prototypes_do_not_see_old_support_images_change():
    cfg = small()
    model = ContinualHyperTransformer(cfg).eval()
    batch = sequences(cfg, tasks=2)

    def final_logits(recompute: bool, change: bool) -> torch.Tensor:
        support = batch.support_x[:, 0].clone()
        stream = TaskStream(model, recompute)
        with torch.no_grad():
            stream.learn(support, batch.support_y[:, 0])
            if change:  # the user's copy of the old support images changes after learning
                support.mul_(-1)
            stream.learn(batch.support_x[:, 1], batch.support_y[:, 1])
            return stream.logits(batch.query_x[:, :2])

    torch.testing.assert_close(final_logits(False, True), final_logits(False, False))
    assert not torch.allclose(final_logits(True, True), final_logits(True, False))
    # ... and recomputing uses θ_1 for task 0's prototypes, not the stored ones
    assert not torch.allclose(final_logits(True, False), final_logits(False, False))


def test_support_order_does_not_matter():
    cfg = small()
    model = ContinualHyperTransformer(cfg).double().eval()
    batch = sequences(cfg, tasks=2)
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    perm = torch.randperm(cfg.samples_transformer)
    shuffled = SequenceBatch(batch.support_x[:, :, perm], batch.support_y[:, :, perm],
                             batch.support_mask[:, :, perm], batch.query_x, batch.query_y,
                             batch.classes)
    with torch.no_grad():
        for a, b in zip(run(model, batch), run(model, shuffled), strict=True):
            torch.testing.assert_close(a, b)


def test_batched_sequences_equal_separate_sequences():
    cfg = small("class")
    model = ContinualHyperTransformer(cfg).double().eval()
    batch = sequences(cfg, count=3)
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    with torch.no_grad():
        together = run(model, batch)
        for i in range(3):
            one = SequenceBatch(**{k: v[i:i + 1] for k, v in vars(batch).items()})
            for a, b in zip(together, run(model, one), strict=True):
                torch.testing.assert_close(a[i:i + 1], b)


def test_class_incremental_labels_are_global_and_never_collide():
    cfg = small("class")
    batch = sequences(cfg, count=4, tasks=5)
    for classes in batch.classes:  # [L, N] split classes of one sequence: all different
        assert classes.unique().numel() == classes.numel()
    model = ContinualHyperTransformer(cfg).eval()
    stream = TaskStream(model)
    with torch.no_grad():
        for t in range(3):
            task = batch.task(t)
            stream.learn(task.support_x, task.support_y)
        logits = stream.logits(batch.query_x[:, :3])
    assert logits.shape[-1] == 3 * cfg.num_labels  # every prototype seen so far
    targets = stream.targets(batch.query_y[:, :3])
    for tau in range(3):
        assert targets[:, tau].min() >= tau * cfg.num_labels
        assert targets[:, tau].max() < (tau + 1) * cfg.num_labels
    torch.testing.assert_close(targets % cfg.num_labels, batch.query_y[:, :3])


def test_task_incremental_classifies_among_the_task_classes():
    cfg = small("task")
    batch = sequences(cfg)
    logits = run(ContinualHyperTransformer(cfg).eval(), batch)[-1]
    assert logits.shape == (2, cfg.cht_tasks, cfg.samples_cnn, cfg.num_labels)


def test_minibatch_chunks_share_classes_and_combine_prototypes_by_count():
    cfg = small("minibatch", unlabeled_samples_per_class=1, samples_transformer=8)
    batch = sequences(cfg, count=2)
    assert (batch.classes == batch.classes[:, :1]).all()  # the same N classes in every chunk
    model = ProtoNet(cfg).eval()
    stream = TaskStream(model)
    with torch.no_grad():
        for t in range(2):
            task = batch.task(t)
            stream.learn(task.support_x, task.support_y)
        # combined prototype = mean over every labelled support embedding of both chunks
        # (the ProtoNet's embedding does not change between chunks, but BatchNorm uses each
        # chunk's own statistics, so the chunks are embedded separately)
        means = []
        for t in range(2):
            task = batch.task(t)
            emb = model.embed(task.support_x)
            means.append((emb, task.support_y))
        emb = torch.cat([e for e, _ in means], 1)
        labels = torch.cat([y for _, y in means], 1)
        onehot = torch.nn.functional.one_hot(labels, cfg.num_labels + 1)[..., :-1].float()
        expected = onehot.transpose(1, 2) @ emb / onehot.sum(1).unsqueeze(-1)
        got = stream.candidates(2)
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 1], expected, rtol=1e-5, atol=1e-5)


def test_unlabelled_support_samples_shape_weights_not_prototypes():
    cfg = small(unlabeled_samples_per_class=1, samples_transformer=8)
    model = ContinualHyperTransformer(cfg).eval()
    batch = sequences(cfg, tasks=1)
    task = batch.task(0)
    assert (task.support_y == cfg.num_labels).sum() == 2 * cfg.num_labels
    stream = TaskStream(model)
    with torch.no_grad():
        stream.learn(task.support_x, task.support_y)
    assert torch.equal(stream.counts[0], torch.ones(2, cfg.num_labels))


def test_bad_sequence_requests_fail_with_a_message():
    cfg = small()
    with pytest.raises(DatasetError, match="needs 40 classes"):
        SequenceSampler.from_config(toy_dataset(classes=30), cfg, train=True, seed=0,
                                    num_tasks=10)
    with pytest.raises(DatasetError, match="at least 1 task"):
        SequenceSampler(EpisodeSampler.from_config(toy_dataset(), cfg, train=True, seed=0), 0,
                        "task")
    with pytest.raises(DatasetError, match="num_sequences"):
        SequenceSampler.from_config(toy_dataset(), cfg, train=True, seed=0).sample(0)
    with pytest.raises(DatasetError, match="cht_scenario"):
        SequenceSampler.from_config(toy_dataset(), cfg.replace(cht_scenario="domain"),
                                    train=True, seed=0)
    with pytest.raises(ValueError, match="cht_tasks"):
        build_model(cfg.replace(cht_tasks=0))
    with pytest.raises(ValueError, match="model_type"):
        build_model(cfg.replace(model_type="maml"))
    stream = TaskStream(ContinualHyperTransformer(cfg))
    with pytest.raises(ValueError, match="0 task"):
        stream.logits(torch.zeros(1, 1, 2, 1, 28, 28))


def test_loss_is_the_mean_over_steps_of_the_sums_over_seen_tasks():
    cfg = small()
    model = ContinualHyperTransformer(cfg).double().eval()
    batch = sequences(cfg)
    batch.support_x, batch.query_x = batch.support_x.double(), batch.query_x.double()
    with torch.no_grad():
        out = model.batch_loss(batch)
        expected = 0.0
        for t, logits in enumerate(run(model, batch)):
            for tau in range(t + 1):
                expected += torch.nn.functional.cross_entropy(
                    logits[:, tau].flatten(0, 1), batch.query_y[:, tau].flatten()).item()
    assert out.loss.item() == pytest.approx(expected / cfg.cht_tasks, rel=1e-9)


def test_summaries_of_a_known_matrix():
    # one sequence, 3 tasks: A = [[.9], [.8, .7], [.6, .9, .5]]
    acc = np.zeros((1, 3, 3))
    acc[0][np.tril_indices(3)] = [.9, .8, .7, .6, .9, .5]
    record = summarize(acc)
    assert record["accuracy_matrix"] == [[.9], [.8, .7], [.6, .9, .5]]
    assert record["final_accuracy"] == pytest.approx((.6 + .9 + .5) / 3)
    # forgetting: task 0 max(.9, .8) - .6 = .3; task 1: .7 - .9 = -.2 -> mean .05
    assert record["forgetting"] == pytest.approx(0.05)
    # backward transfer: (.6 - .9) + (.9 - .7) -> mean -.05
    assert record["backward_transfer"] == pytest.approx(-0.05)


def test_evaluation_is_deterministic_and_shared_by_the_baseline():
    cfg = small(cht_eval_tasks=4)
    data = toy_dataset()
    kwargs = dict(num_sequences=3, num_tasks=4, num_batches=2, batch_size=8, seed=5)
    cht = ContinualHyperTransformer(cfg)
    a = evaluate_continual(cht, cfg, data, **kwargs)
    b = evaluate_continual(cht, cfg, data, **kwargs)
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert len(a["accuracy_matrix"]) == 4 and [len(r) for r in a["accuracy_matrix"]] == [
        1, 2, 3, 4]
    # the evaluation's scenario wins over the one the model was trained in
    as_class = evaluate_continual(cht, cfg.replace(cht_scenario="class"), data, **kwargs)
    assert as_class["scenario"] == "class"
    assert as_class["accuracy_matrix"][0] == a["accuracy_matrix"][0]  # t = 0: the same
    assert as_class["accuracy_matrix"][1:] != a["accuracy_matrix"][1:]
    pn_cfg = cfg.replace(model_type="protonet")
    pn = evaluate_continual(ProtoNet(pn_cfg), pn_cfg, data, **kwargs)
    # ConstPN: no weights change, stored prototypes -> the entries of a task never change
    matrix = pn["accuracy_matrix"]
    for tau in range(4):
        column = [matrix[t][tau] for t in range(tau, 4)]
        assert column == pytest.approx([column[0]] * len(column))
    assert pn["forgetting"] == pytest.approx(0.0, abs=1e-12)


def test_training_resumes_exactly(tmp_path):
    cfg = small(data_dir=None, train_dataset="glyphs:train", test_dataset="glyphs:test",
                eval_datasets="glyphs", shuffle_labels_seed=0, episodes_per_step=2,
                steps_between_saves=2, train_steps=4, dropout_rate=0.1)
    run_kw = dict(progress=False, log_every=2, heldout_episodes=2)
    train(cfg, tmp_path / "straight", **run_kw)
    train(cfg, tmp_path / "resumed", max_steps=2, **run_kw)
    train(cfg, tmp_path / "resumed", **run_kw)
    from hypertransformer.training import load_checkpoint
    a = load_checkpoint(tmp_path / "straight/checkpoints/ckpt-00000004.pt")
    b = load_checkpoint(tmp_path / "resumed/checkpoints/ckpt-00000004.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    lines = [json.loads(x) for x in
             (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]


@pytest.mark.parametrize("scale", [False, True])
def test_a_residual_cht_starts_as_the_protonet_it_is_initialised_from(scale):
    cfg = small(cht_residual=True, cht_embedding_scale=scale, cht_residual_scale=0.0)
    protonet = ProtoNet(small(model_type="protonet"))
    for p in protonet.parameters():  # trained-looking γ, β, kernels and embedding
        p.data.normal_()
    model = ContinualHyperTransformer(cfg).eval()
    model.start_from(protonet)
    batch = sequences(cfg, tasks=2)
    stream = TaskStream(model)
    with torch.no_grad():
        for t in range(2):
            stream.learn(batch.support_x[:, t], batch.support_y[:, t])
            torch.testing.assert_close(model.embed(batch.query_x[:, t], stream.weights),
                                       protonet.embed(batch.query_x[:, t]))
    with pytest.raises(ValueError, match="cht_residual=true"):
        ContinualHyperTransformer(small()).start_from(protonet)
    with pytest.raises(ValueError, match="must hold a ProtoNet"):
        model.start_from(HyperTransformer(cfg))
    with pytest.raises(ValueError, match="does not fit"):
        model.start_from(ProtoNet(small(model_type="protonet", default_num_channels=5)))


def test_training_starts_from_init_checkpoint_only_when_fresh(tmp_path):
    from hypertransformer.training import load_checkpoint
    glyphs = dict(data_dir=None, train_dataset="glyphs:train", test_dataset="glyphs:test",
                  eval_datasets="glyphs", shuffle_labels_seed=0, episodes_per_step=2,
                  steps_between_saves=1, train_steps=1)
    run_kw = dict(progress=False, log_every=1, heldout_episodes=2)
    train(small(model_type="protonet", **glyphs), tmp_path / "pn", **run_kw)
    pn = load_checkpoint(tmp_path / "pn/checkpoints/ckpt-00000001.pt")["model"]
    cfg = small(cht_residual=True, learning_rate=0.0, init_checkpoint=str(tmp_path / "pn"),
                **glyphs)
    train(cfg, tmp_path / "cht", **run_kw)
    cht = load_checkpoint(tmp_path / "cht/checkpoints/ckpt-00000001.pt")["model"]
    torch.testing.assert_close(cht["initial.logits"],
                               torch.cat([pn["embedding.weight"], pn["embedding.bias"][:, None]],
                                         1))
    torch.testing.assert_close(cht["ht.conv_layers.0.gamma"], pn["conv_layers.0.gamma"])
    # a resumed run keeps its own parameters, whatever init_checkpoint holds now
    train(cfg.replace(train_steps=2, init_checkpoint=str(tmp_path / "nowhere")),
          tmp_path / "cht", **run_kw)
    with pytest.raises(ValueError, match="initialises an HT"):
        train(small(model_type="protonet", init_checkpoint=str(tmp_path / "pn"), **glyphs),
              tmp_path / "pn2", **run_kw)


def test_cli_trains_and_evaluates_a_matrix_of_2L_rows(tmp_path):
    """The issue's done-when, shrunk: `train --preset cht_glyphs_demo` then `evaluate --json`."""
    log = tmp_path / "cht"
    small_model = ["--set", "embedding_dim=16", "--set", "num_layers=1", "--set",
                   "samples_cnn=10"]
    cmd = [sys.executable, "-m", "hypertransformer.cli"]
    done = subprocess.run(cmd + ["train", "--preset", "cht_glyphs_demo", "--log-dir", str(log),
                                 "--steps", "2", "--log-every", "1", "--no-progress",
                                 "--set", "cht_tasks=2", *small_model],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = subprocess.run(cmd + ["evaluate", "--log-dir", str(log), "--tasks", "4",
                                "--batch-size", "20", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["model_type"] == "cht" and record["tasks_per_sequence"] == 4
    assert [len(row) for row in record["accuracy_matrix"]] == [1, 2, 3, 4]
    for key in ("final_accuracy", "forgetting", "backward_transfer"):
        assert isinstance(record[key], float)
    assert "A[t, τ]" in out.stdout
    paths = plot_log_dir(log)  # the heatmap and curves of the matrix
    assert log / "plots" / f"continual_test-{record['step']:08d}.png" in paths
    # evaluated otherwise than trained: a record of its own next to the first
    out = subprocess.run(cmd + ["evaluate", "--log-dir", str(log), "--tasks", "2",
                                "--batch-size", "20", "--scenario", "class",
                                "--sequence-length", "3", "--recompute-prototypes", "--json"],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    variant = json.loads(out.stdout.strip().splitlines()[-1])
    assert variant["scenario"] == "class" and variant["recompute_prototypes"]
    assert len(variant["accuracy_matrix"]) == 3
    assert sorted(p.name for p in (log / "eval").glob("*.json")) == [
        f"test-{record['step']:08d}-class-3tasks-recompute.json",
        f"test-{record['step']:08d}.json"]


def test_distances():
    e = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    c = torch.tensor([[[0.0, 1.0], [3.0, 1.0], [1.0, 1.0]]])
    assert squared_distances(e, c).tolist() == [[[1.0, 10.0, 2.0], [1.0, 4.0, 0.0]]]


def test_two_ranks_train_a_cht_under_torchrun(tmp_path):
    """The trainer's data-parallel path runs the CHT too: two ranks, each with its own
    sequences (both counted, both RNG states saved)."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "ddp"
    cfg = small(train_dataset="glyphs:train", test_dataset="glyphs:test", eval_datasets="glyphs",
                shuffle_labels_seed=0, episodes_per_step=2, train_steps=2,
                steps_between_saves=1, train_log_dir=str(log))
    flags = [f"--{k}={'' if v is None else v}" for k, v in cfg.to_dict().items()]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}", "-m",
                           "hypertransformer.train", *flags],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "finished at step 2" in done.stdout
    from hypertransformer.training import latest_checkpoint, load_checkpoint
    state = load_checkpoint(latest_checkpoint(log))
    assert state["episodes_seen"] == 4 and len(state["rank_rng"]) == 1


def test_merged_ht_generates_from_the_union_with_global_labels():
    cfg = small(model_type="merged_ht", unlabeled_samples_per_class=1, samples_transformer=8)
    model = build_model(cfg).eval()
    assert isinstance(model, MergedHyperTransformer)
    # one label token per class of cht_tasks tasks, and one for unlabelled samples
    assert model.ht.generators["conv1"].label_embedding.shape[0] == 3 * 4 + 1
    batch = sequences(cfg, tasks=3)
    seen = []
    generate = model.ht.generate

    def spy(x, y, mask=None, previous=None):
        seen.append((x.shape[1], y.clone(), previous))
        return generate(x, y, mask, previous)

    model.ht.generate = spy
    stream = TaskStream(model)
    with torch.no_grad():
        for t in range(3):
            task = batch.task(t)
            stream.learn(task.support_x, task.support_y, task.support_mask)
        logits = stream.logits(batch.query_x)
    assert [size for size, _, _ in seen] == [8, 16, 24]  # the union grows, nothing fed back
    assert all(previous is None for _, _, previous in seen)
    labels = seen[-1][1]
    for tau in range(3):
        part = labels[:, tau * 8:(tau + 1) * 8]
        labelled = part[part < 12]
        assert labelled.min() >= tau * 4 and labelled.max() < (tau + 1) * 4
        assert (part == 12).sum() == 2 * 4  # unlabelled: the last token, u=1 per class
    assert logits.shape == (2, 3, cfg.samples_cnn, 4)
    extra = batch.task(0)
    with pytest.raises(ValueError, match="cannot merge 4"):
        stream.learn(extra.support_x, extra.support_y)


def test_model_summary_of_the_continual_presets(capsys):
    from hypertransformer.cli import main

    assert main(["model-summary", "cht_omniglot_task"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ContinualHyperTransformer") and "32+5" in out  # D = 32 tokens
    assert main(["model-summary", "protonet_omniglot_continual"]) == 0
    assert "nothing generated" in capsys.readouterr().out
