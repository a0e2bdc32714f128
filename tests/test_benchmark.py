"""``benchmarks/throughput.py``: argument parsing, FLOP counting and the JSON line (a smoke test
on a tiny run; the numbers themselves depend on the machine and are not checked)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
KEYS = {"episodes_per_s", "gflops", "peak_gflops", "ratio", "eval_s", "peak_rss_mb",
        "sampling_episodes_per_s", "threads", "episodes_per_step", "nproc", "dtype",
        "baseline_episodes_per_s", "speedup"}


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(throughput):
    args = throughput.parse_args(["--preset", "omniglot_1shot"])
    assert (args.steps, args.eval_tasks, args.data_dir, args.json) == (50, 1024, None, False)
    assert (args.nproc, args.threads) == (None, None)  # train's defaults
    cfg = throughput.build_config(args)
    assert cfg.episodes_per_step == 1  # the preset's
    assert (cfg.train_dataset, cfg.test_dataset) == ("glyphs:train", "glyphs:test")
    cfg = throughput.build_config(throughput.parse_args(
        ["--preset", "omniglot_1shot", "--episodes-per-step", "16", "--data-dir", "/d"]))
    assert cfg.episodes_per_step == 16
    assert (cfg.data_dir, cfg.train_dataset) == ("/d", "omniglot:0-1149")
    for bad in (["--steps", "0"], ["--threads", "0"], ["--nproc", "0"],
                ["--episodes-per-step", "0"], ["--eval-tasks", "-1"], ["--preset", "nope"]):
        with pytest.raises(SystemExit):
            throughput.parse_args(["--preset", "glyphs_demo", *bad])


def test_grouped_conv_backward_counts_each_group_once(throughput):
    """torch's formula counts a grouped conv's weight gradient ``groups`` times; ours counts
    forward + backward = 3 × forward, grouped or not."""
    for groups in (1, 4):
        x = torch.randn(2, 3 * groups, 8, 8, requires_grad=True)
        w = torch.randn(5 * groups, 3, 3, 3, requires_grad=True)
        mapping = {torch.ops.aten.convolution_backward: throughput.conv_backward_flop}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            F.conv2d(x, w, groups=groups).sum().backward()
        counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        assert counts["aten.convolution_backward"] == 2 * counts["aten.convolution"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_tiny_run_prints_json_last(tmp_path, nproc):
    """Training as ``train`` runs it (``nproc`` processes of 1 thread), the one-process fp32
    one-episode baseline beside it, and the evaluation."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "glyphs_demo", "--episodes-per-step", "2",
         "--nproc", str(nproc), "--steps", "2", "--warmup", "1", "--eval-tasks", "2",
         "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("train") for line in lines[:-1])  # the human-readable report
    assert any(line.startswith("baseline") for line in lines[:-1])
    result = json.loads(lines[-1])
    assert KEYS <= set(result)
    assert (result["nproc"], result["threads"]) == (nproc, 1)
    # auto's choices, whatever this host has, beside fp32 in the same run
    assert result["dtype"] in ("fp32", "bf16") and result["eval_dtype"] in ("fp32", "bf16")
    assert result["dtype_reason"].startswith("auto") and isinstance(result["bf16_flags"], list)
    assert any(line.startswith("dtype auto") for line in lines[:-1])
    assert result["auto_speedup"] == pytest.approx(
        result["episodes_per_s"] / result["fp32_episodes_per_s"])
    assert result["fp32_eval_s"] > 0
    assert (result["episodes_per_step"], result["eval_tasks"]) == (2, 2)
    for key in ("episodes_per_s", "gflops", "peak_gflops", "eval_s", "peak_rss_mb",
                "sampling_episodes_per_s", "baseline_episodes_per_s"):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["gflops"] / result["peak_gflops"])
    assert result["speedup"] == pytest.approx(
        result["episodes_per_s"] / result["baseline_episodes_per_s"])


def test_defaults_are_trains(throughput, monkeypatch):
    """Without --nproc and --threads: train's processes (the cores, at most T), 1 thread each
    when there are several; fp32, then auto."""
    monkeypatch.setattr(throughput, "usable_cores", lambda: 2)
    seen = []
    monkeypatch.setattr(throughput, "train_seconds_per_step",
                        lambda cfg, nproc, threads, steps, warmup:
                        seen.append((cfg.episodes_per_step, cfg.dtype, nproc,
                                     threads)) or (0.5, "fp32"))
    monkeypatch.setattr(throughput, "peak_matmul_gflops", lambda: 100.0)
    args = throughput.parse_args(["--preset", "glyphs_demo", "--episodes-per-step", "4",
                                  "--steps", "1", "--eval-tasks", "0"])
    result = throughput.run(args)
    # the baseline, then ours in fp32 and in auto
    assert seen == [(1, "fp32", 1, None), (4, "fp32", 2, None), (4, "auto", 2, None)]
    assert (result["nproc"], result["threads"], result["dtype"]) == (2, 1, "fp32")
    assert result["speedup"] == pytest.approx(4.0)


@pytest.mark.parametrize(("extra", "unit", "what"), [
    (["--episodes-per-step", "2", "--steps", "1"], "step", "2 episodes/step"),
    (["--eval-tasks", "2"], "task", "evaluation of 2 tasks × 16 × 100"),
])
def test_profile_step_prints_per_operator_times(extra, unit, what):
    script = SCRIPT.with_name("profile_step.py")
    out = subprocess.run(
        [sys.executable, str(script), "--preset", "glyphs_demo", "--rows", "4", *extra],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"glyphs_demo on glyphs, {what}")
    assert lines[0].endswith(f"ms per {unit}") and "1 thread(s), fp32: self CPU time" in lines[0]
    assert lines[1].split() == ["operator", f"ms/{unit}", f"calls/{unit}"]
    assert len(lines) == 2 + 4
    assert all(float(line.split()[-2]) >= 0 for line in lines[2:])


@pytest.mark.parametrize("extra", [[], ["--inference"]])
def test_conv_forms_agree_and_print_a_row_per_layer(extra):
    """Every form of the conv layer gives the model's result (the script checks, forward and
    gradients) and is timed at each layer shape (28 -> 14 -> 7 -> 3 px: four layers)."""
    script = SCRIPT.with_name("conv_forms.py")
    out = subprocess.run(
        [sys.executable, str(script), "--tasks", "4", "--images", "3", "--rounds", "1",
         *extra], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[1].split() == ["layer", "grouped_cl", "grouped", "unfold_bmm", "blockdiag2",
                                "blockdiag4"]
    assert [line.split()[0] for line in lines[2:]] == ["1->8", "8->8", "8->8", "8->8"]


def test_profile_step_can_put_the_transformers_in_bf16_too():
    """--bf16-transformer removes their float32 island: autocast then casts their inputs and
    weights, so the step makes more copies than with the island."""
    def copies(*extra: str) -> int:
        out = subprocess.run(
            [sys.executable, str(SCRIPT.with_name("profile_step.py")), "--preset",
             "glyphs_demo", "--rows", "60", "--episodes-per-step", "2", "--steps", "1",
             "--dtype", "bf16", *extra], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert "1 thread(s), bf16: self CPU time" in lines[0]
        return sum(int(line.split()[-1]) for line in lines[2:]
                   if line.split()[0] in ("aten::copy_", "aten::_to_copy"))

    assert copies("--bf16-transformer") > copies()


def test_dtype_agreement_compares_fp32_and_bf16_predictions():
    out = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("dtype_agreement.py")), "--model", "glyphs_demo",
         "--tasks", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("glyphs_demo, 2 tasks of 5 classes x 5 queries")
    median, largest = (float(w) for w in line.split("median ")[1].split(";")[0].split(", max "))
    agreement = float(line.split("agrees on ")[1].split(" %")[0])
    assert 0 < median <= largest < 2  # bf16 differs, but little
    assert 80 <= agreement <= 100
