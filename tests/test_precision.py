"""The compute dtype (hypertransformer.precision): what auto chooses and why, its cache, the
float32 islands, and bf16 end to end (train, evaluate, fit, stream) close to fp32.

Nothing here assumes the host: bf16 is asked for explicitly (emulated where the CPU has no
native bf16: slower, still correct), and auto is tested with the CPU flags and the
measurement replaced."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hypertransformer import cli, precision, presets
from hypertransformer.config import Config
from hypertransformer.data.registry import load_split
from hypertransformer.evaluation.evaluator import evaluate_model
from hypertransformer.inference import load
from hypertransformer.model import HyperTransformer
from hypertransformer.model.continual import squared_distances
from hypertransformer.model.ops import batch_norm
from hypertransformer.precision import FP32, fp32, resolve_precision

pytestmark = pytest.mark.usefixtures("one_thread")
BF16 = precision.Precision("bf16", "requested")


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HT_CACHE_DIR", str(tmp_path))
    return tmp_path / precision.CACHE_FILE


def fake_cpu(monkeypatch: pytest.MonkeyPatch, flags: list[str], fp32_ms: float = 10.0,
             bf16_ms: float = 5.0) -> list[bool]:
    """Replaces the CPU flags and the measurement; returns the log of measurements."""
    calls: list[bool] = []
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))

    def measure(training: bool, rounds: int = precision.ROUNDS) -> dict[str, float]:
        calls.append(training)
        return {"fp32_ms": fp32_ms, "bf16_ms": bf16_ms}

    monkeypatch.setattr(precision, "measure", measure)
    return calls


def test_requested_dtypes_and_errors() -> None:
    assert resolve_precision("fp32") == FP32
    assert resolve_precision("bf16").dtype == torch.bfloat16
    assert resolve_precision("fp16", "cuda").dtype == torch.float16
    with pytest.raises(ValueError, match="dtype=fp16 needs device=cuda"):
        resolve_precision("fp16")
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16, fp16"):
        resolve_precision("float64")
    assert resolve_precision("auto", "cuda").name == "fp32"


def test_auto_without_native_bf16_is_fp32_unmeasured(monkeypatch, cache) -> None:
    calls = fake_cpu(monkeypatch, ["avx2", "fma"])
    p = resolve_precision("auto")
    assert p.name == "fp32" and "no native bf16" in p.reason
    assert calls == [] and not cache.exists()


@pytest.mark.parametrize("flag", precision.BF16_FLAGS)
def test_auto_with_native_bf16_measures_once_per_workload(monkeypatch, cache, flag) -> None:
    calls = fake_cpu(monkeypatch, ["avx2", flag], fp32_ms=10.0, bf16_ms=5.0)
    p = resolve_precision("auto", training=True)
    assert p.name == "bf16" and flag in p.reason and "2.00x" in p.reason
    assert resolve_precision("auto", training=True) == p  # from the cache
    assert resolve_precision("auto").name == "bf16"  # inference is measured apart
    assert calls == [True, False]
    saved = json.loads(cache.read_text())
    assert len(saved) == 2 and all(v == {"fp32_ms": 10.0, "bf16_ms": 5.0}
                                   for v in saved.values())


def test_auto_keeps_fp32_when_bf16_is_not_faster(monkeypatch, cache) -> None:
    fake_cpu(monkeypatch, ["avx512_bf16"], fp32_ms=10.0, bf16_ms=9.5)
    p = resolve_precision("auto")
    assert p.name == "fp32" and "only 1.05x" in p.reason


def test_a_corrupt_or_unwritable_cache_is_measured_again(monkeypatch, cache) -> None:
    calls = fake_cpu(monkeypatch, ["amx_bf16"])
    cache.write_text("{not json")
    assert resolve_precision("auto").name == "bf16" and calls == [False]
    assert json.loads(cache.read_text())  # rewritten
    monkeypatch.setattr(precision, "_cache_path", lambda: None)
    assert resolve_precision("auto").name == "bf16" and calls == [False, False]


def test_measure_runs_both_dtypes_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(3)
    state = torch.get_rng_state()
    for training in (False, True):
        times = precision.measure(training, rounds=1)
        assert set(times) == {"fp32_ms", "bf16_ms"} and min(times.values()) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_native_bf16_reads_the_cpu_flags(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse2", "amx_bf16",
                                                                   "avx512_bf16"}))
    assert precision.native_bf16() == ["avx512_bf16", "amx_bf16"]
    monkeypatch.undo()
    assert isinstance(precision.cpu_flags(), frozenset) and precision.cpu_name()


def test_fp32_islands_under_bf16_autocast() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with torch.autocast("cpu", torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        assert fp32(torch.matmul)(a.bfloat16(), b).dtype == torch.float32
        e, c = torch.randn(2, 5, 16).bfloat16(), torch.randn(2, 3, 16)
        d = squared_distances(e, c)
        assert d.dtype == torch.float32
        assert torch.allclose(d, squared_distances.__wrapped__(e.float(), c))
    assert fp32(torch.matmul)(a, b).dtype == torch.float32  # no autocast: unchanged


def test_batch_norm_statistics_stay_fp32_under_bf16() -> None:
    """Both forms of the per-task BatchNorm: the statistics of bf16 activations are computed
    in float32, so the result matches the fp32 BatchNorm of the same (rounded) values."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(12, 6, 5, 5, generator=g) * 3 + 40).bfloat16()  # a large mean
    gamma, beta = torch.rand(6, generator=g) + 0.5, torch.randn(6, generator=g)
    mask = torch.ones(12, 2, dtype=torch.bool)
    mask[9:, 1] = False
    for m in (None, mask):
        expected = batch_norm(x.float(), gamma, beta, m)
        with torch.autocast("cpu", torch.bfloat16):
            got = batch_norm(x, gamma, beta, m)
        assert got.dtype == (torch.float32 if m is not None else torch.bfloat16)
        # bf16 output rounding only (8 bits); statistics in bf16 would be far off at mean 40
        assert (got.float() - expected).abs().max() < 0.05


def ht_config(**overrides: object) -> Config:
    return presets.load("omniglot_1shot", num_labels=5, samples_transformer=5, samples_cnn=10,
                        embedding_dim=16, num_layers=2, default_num_channels=4,
                        num_layerwise_features=4, shared_features_dim=8, **overrides)


def test_ht_loss_and_gradients_in_bf16_are_close_to_fp32() -> None:
    cfg = ht_config()
    torch.manual_seed(0)
    model = HyperTransformer(cfg)
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.randn(3, 5, 1, 28, 28, generator=g), torch.randn(3, 10, 1, 28, 28, generator=g)
    sy, qy = torch.arange(5).repeat(3, 1), torch.arange(5).repeat(3, 2)
    results = {}
    for p in (FP32, BF16):
        model.zero_grad()
        with p.autocast("cpu"):
            out = model.loss(sx, sy, qx, qy)
        out.loss.backward()
        assert out.logits.dtype == torch.float32 and out.loss.dtype == torch.float32
        grads = {n: q.grad for n, q in model.named_parameters() if q.grad is not None}
        assert all(v.dtype == torch.float32 for v in grads.values())
        results[p.name] = out.loss.item(), out.logits.detach(), grads
    (l32, z32, g32), (l16, z16, g16) = results["fp32"], results["bf16"]
    assert l16 == pytest.approx(l32, rel=0.02)
    assert (z16 - z32).abs().max() < 0.05 * z32.abs().max() + 0.05
    assert set(g16) == set(g32)
    cosines = [F.cosine_similarity(g16[n].flatten(), g32[n].flatten(), 0).item() for n in g32
               if g32[n].abs().sum() > 0]
    assert np.median(cosines) > 0.95


def test_training_in_bf16_follows_fp32(tmp_path: Path) -> None:
    """A few steps of the trainer with dtype=bf16 and fp32 from the same seed: the dtype is
    logged and recorded, the first step's loss (the same weights) agrees closely, and the two
    runs then stay near each other."""
    from hypertransformer.training.trainer import train

    losses = {}
    for name in ("fp32", "bf16"):
        log_dir = tmp_path / name
        cfg = ht_config(train_dataset="glyphs:train", test_dataset="glyphs:test",
                        train_steps=6, episodes_per_step=2, dtype=name,
                        train_log_dir=str(log_dir), learning_rate=1e-3)
        train(cfg, log_dir, log_every=1)
        lines = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
        assert {r["dtype"] for r in lines} == {name}
        assert json.loads((log_dir / "config.json").read_text())["dtype"] == name
        losses[name] = [r["loss"] for r in lines]
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.02)
    assert np.mean(losses["bf16"]) == pytest.approx(np.mean(losses["fp32"]), rel=0.1)


def test_evaluation_in_bf16_is_close_to_fp32() -> None:
    cfg = ht_config(test_dataset="glyphs:test")
    torch.manual_seed(0)
    model = HyperTransformer(cfg)
    data = load_split(cfg, "test")
    runs = {name: evaluate_model(model, cfg.replace(dtype=name), data, num_tasks=8,
                                 num_batches=2, batch_size=20, seed=0)
            for name in ("fp32", "bf16")}
    assert runs["fp32"].dtype == "fp32" and runs["bf16"].dtype == "bf16"
    diff = np.abs(np.subtract(runs["bf16"].task_accuracies, runs["fp32"].task_accuracies))
    assert diff.max() <= 0.1 and diff.mean() <= 0.03


def test_fit_and_stream_in_bf16_agree_with_fp32() -> None:
    classes = load_split(presets.load("glyphs_demo"), "test").classes[:5]
    x = [c[0, ..., 0] for c in classes]
    queries = [c[i, ..., 0] for c in classes for i in (1, 2)]
    fp, bf = load("omniglot_1shot", dtype="fp32"), load("omniglot_1shot", dtype="bf16")
    assert fp.precision == FP32 and bf.precision.name == "bf16"
    p32 = fp.fit(x, list("abcde")).predict_proba(queries)
    p16 = bf.fit(x, list("abcde")).predict_proba(queries)
    assert p16.dtype == torch.float32
    assert (p16 - p32).abs().max() < 0.1  # probabilities through bf16 convolutions
    assert (p16.argmax(1) == p32.argmax(1)).float().mean() >= 0.9
    # fine-tuning (10-way 5-shot) runs in float32 whatever the precision: in bf16 it lost
    # the task
    many = load_split(presets.load("glyphs_demo"), "test").classes[:10]
    support = [c[i, ..., 0] for c in many for i in range(5)]
    labels = [k for k in range(10) for _ in range(5)]
    q = [c[i, ..., 0] for c in many for i in (6, 7, 8)]
    t32, t16 = (m.fit(support, labels).predict_proba(q) for m in (fp, bf))
    assert (t16.argmax(1) == t32.argmax(1)).float().mean() >= 0.9
    logits = {}
    for name in ("fp32", "bf16"):
        stream = load("cht_omniglot_task", dtype=name).stream()
        stream.learn(x, list("abcde"))
        logits[name] = stream.logits(queries)
    assert logits["bf16"].dtype == torch.float32
    assert (logits["bf16"] - logits["fp32"]).abs().max() < 0.05 * logits["fp32"].abs().max()


def test_an_old_config_with_mixed_precision_loads() -> None:
    old = Config().to_dict()
    del old["dtype"]
    assert Config.from_dict({**old, "mixed_precision": "none"}).dtype == "auto"
    assert Config.from_dict({**old, "mixed_precision": "bf16"}).dtype == "bf16"


def test_the_dtype_option_of_the_commands(tmp_path: Path, capsys) -> None:
    log_dir = tmp_path / "run"
    assert cli.main(["train", "--preset", "glyphs_demo", "--log-dir", str(log_dir), "--steps",
                     "2", "--nproc", "1", "--no-progress", "--dtype", "fp32"]) == 0
    assert "dtype fp32 (requested)" in capsys.readouterr().out
    assert json.loads((log_dir / "config.json").read_text())["dtype"] == "fp32"
    assert cli.main(["evaluate", "--log-dir", str(log_dir), "--tasks", "4", "--batches", "1",
                     "--dtype", "bf16", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["dtype"] == "bf16"
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--log-dir", str(log_dir), "--dtype", "fp64"])
