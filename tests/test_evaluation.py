"""Evaluation protocol (SPEC §5), checkpoint evaluation, --watch and the absl entry point."""

from __future__ import annotations

import ast
import json
import math
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hypertransformer import presets
from hypertransformer.cli import main as cli_main
from hypertransformer.config import Config
from hypertransformer.data.registry import load_dataset
from hypertransformer.evaluate import main as absl_main
from hypertransformer.evaluation import EvalResult, confidence_interval, evaluate_model
from hypertransformer.evaluation.evaluator import record_path, watch
from hypertransformer.model import HyperTransformer
from hypertransformer.training import list_checkpoints, train

NUM_CLASSES = 12


def toy_cache(root: Path) -> Path:
    """``toy.npy``: 12 classes x 12 samples of 28x28; every pixel of class c is 10c + 5."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.empty((NUM_CLASSES, 12, 28, 28), np.uint8)
    for c in range(NUM_CLASSES):
        images[c] = 10 * c + 5
    np.save(root / "toy.npy", images)
    return root


def toy_config(numpy_dir: Path, **overrides) -> Config:
    """A small glyphs_demo-shaped 5-way 1-shot config on the toy cache."""
    settings = dict(train_dataset="toy:0-6", test_dataset="toy:7-11", eval_datasets="",
                    data_numpy_dir=str(numpy_dir), num_task_evals=3, num_eval_batches=2,
                    eval_batch_size=10, steps_between_saves=2, train_steps=4)
    return presets.load("glyphs_demo", **(settings | overrides))


def class_of(x: torch.Tensor) -> torch.Tensor:
    """The toy class of each normalised image [..., C, H, W]."""
    return torch.div(((x[..., 0, 0, 0] + 1) * 128).round().long() - 5, 10,
                     rounding_mode="floor")


class StubModel(nn.Module):
    """Knows each task's class -> label map from its support set; right on the first
    ``right_batches`` query batches after each ``generate`` and wrong (label + 1) after.
    Records every call."""

    def __init__(self, num_labels: int, right_batches: int) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.num_labels, self.right_batches = num_labels, right_batches
        self.generated: list[tuple[torch.Tensor, object]] = []
        self.masks: list[torch.Tensor | None] = []  # the support_mask of every generate call
        self.classified: list[tuple[torch.Tensor, object]] = []
        self.modes: list[tuple[bool, bool]] = []  # (training, grad enabled) per call

    def generate(self, support_x, support_y, support_mask=None):
        self.modes.append((self.training, torch.is_grad_enabled()))
        self.masks.append(support_mask)
        lookup = torch.full((support_x.shape[0], NUM_CLASSES), -1)
        lookup.scatter_(1, class_of(support_x), support_y)
        weights = {"lookup": lookup, "calls": 0}
        self.generated.append((support_x, weights))
        return weights

    def classify(self, query_x, weights):
        self.modes.append((self.training, torch.is_grad_enabled()))
        self.classified.append((query_x, weights))
        label = weights["lookup"].gather(1, class_of(query_x))
        assert (label >= 0).all(), "a query class is not in its task's support set"
        if weights["calls"] >= self.right_batches:
            label = (label + 1) % self.num_labels
        weights["calls"] += 1
        return nn.functional.one_hot(label, self.num_labels).float()


@pytest.fixture(scope="module")
def numpy_dir(tmp_path_factory) -> Path:
    return toy_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def toy_test(numpy_dir) -> tuple[Config, object]:
    cfg = toy_config(numpy_dir)
    data = load_dataset(cfg.test_dataset, data_numpy_dir=cfg.data_numpy_dir)
    return cfg, data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, numpy_dir) -> Path:
    """A log dir trained for 2 of 4 steps (ckpt-00000002.pt, no done.json)."""
    log_dir = tmp_path_factory.mktemp("run") / "log"
    train(toy_config(numpy_dir), log_dir, max_steps=2, progress=False, log_every=1)
    return log_dir


# ---- the 95% interval -------------------------------------------------------------------

def test_confidence_interval_by_hand():
    # mean 0.775; squared deviations .075625 + .005625 + .015625 + .050625 = .1475;
    # population variance .1475 / 4 = .036875, std .1920286; 1.96 * .1920286 / 2 = .1881880
    mean, ci = confidence_interval([0.5, 0.7, 0.9, 1.0])
    assert mean == pytest.approx(0.775)
    assert ci == pytest.approx(0.1881880, abs=1e-6)
    # not the sample std (ddof=1): 1.96 * sqrt(.1475 / 3) / 2 = .2173003
    assert abs(ci - 0.2173003) > 0.02
    assert confidence_interval([0.3] * 5) == (pytest.approx(0.3), 0.0)
    with pytest.raises(ValueError):
        confidence_interval([])


# ---- no import circle between the two protocols -----------------------------------------

EVALUATION = Path(__file__).resolve().parents[1] / "src/hypertransformer/evaluation"


@pytest.mark.parametrize("first,second", [("continual", "evaluator"),
                                          ("evaluator", "continual")])
def test_the_protocol_modules_import_in_either_order(first: str, second: str) -> None:
    code = (f"import hypertransformer.evaluation.{first}, "
            f"hypertransformer.evaluation.{second}")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def imported(node: ast.AST) -> list[str]:
    """The modules an import statement names (``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        return [base] + [f"{base}.{alias.name}".lstrip(".") for alias in node.names]
    return []


def test_no_function_level_import_between_the_protocol_modules() -> None:
    for name, other in [("continual", "evaluator"), ("evaluator", "continual")]:
        tree = ast.parse((EVALUATION / f"{name}.py").read_text())
        local = [node.lineno for function in ast.walk(tree)
                 if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
                 for node in ast.walk(function)
                 if any(m == other or m.endswith(f".{other}") for m in imported(node))]
        assert not local, f"{name}.py imports {other} inside a function (lines {local})"


# ---- the protocol, with a stub model ------------------------------------------------------

def test_one_generate_per_task_batch_and_classify_per_query_batch(toy_test):
    cfg, data = toy_test
    stub = StubModel(cfg.num_labels, right_batches=1)
    result = evaluate_model(stub, cfg, data, num_tasks=5, num_batches=4, batch_size=10,
                            seed=0, tasks_per_call=2)
    # tasks 0-1, 2-3, 4: three generate calls, each followed by 4 query batches
    assert [s.shape[0] for s, _ in stub.generated] == [2, 2, 1]
    assert len(stub.classified) == 3 * 4
    for i, (query_x, weights) in enumerate(stub.classified):
        assert weights is stub.generated[i // 4][1]  # the generated CNN is reused
        assert query_x.shape[:2] == (stub.generated[i // 4][0].shape[0], 10)
    # the query batches of a task are different draws (orders) of the same classes
    first, second = class_of(stub.classified[0][0]), class_of(stub.classified[1][0])
    assert not torch.equal(first, second)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(first, second, strict=True))
    # right on 1 of 4 batches: every task accuracy is exactly 1/4 = mean over its batches
    assert result.task_accuracies == [0.25] * 5
    assert result.accuracy == 0.25 and result.ci95 == 0.0
    assert (result.num_tasks, result.num_batches, result.batch_size) == (5, 4, 10)
    # no gradients, eval mode during the evaluation; the previous mode is restored
    assert set(stub.modes) == {(False, False)}
    assert stub.training


def test_support_set_is_fixed_per_task(toy_test):
    """Each task's query classes are its support classes (one episode class set per task) and
    the 5-way support has one image per class."""
    cfg, data = toy_test
    stub = StubModel(cfg.num_labels, right_batches=3)
    result = evaluate_model(stub, cfg, data, num_tasks=4, num_batches=3, batch_size=10)
    assert result.task_accuracies == [1.0] * 4  # the lookup from the support set is right
    for support_x, _ in stub.generated:
        classes = class_of(support_x)
        assert all(len(set(row.tolist())) == cfg.num_labels for row in classes)


def test_deterministic_for_a_seed_and_independent_of_tasks_per_call(toy_test):
    cfg, data = toy_test

    def supports(seed: int, tasks_per_call: int) -> torch.Tensor:
        stub = StubModel(cfg.num_labels, right_batches=1)
        evaluate_model(stub, cfg, data, num_tasks=6, num_batches=2, batch_size=10,
                       seed=seed, tasks_per_call=tasks_per_call)
        return torch.cat([class_of(s) for s, _ in stub.generated])

    a = supports(0, 6)
    assert torch.equal(a, supports(0, 6))
    assert torch.equal(a, supports(0, 4))  # the tasks do not depend on the chunking
    assert not torch.equal(a, supports(1, 6))


def test_bad_protocol_sizes(toy_test):
    cfg, data = toy_test
    with pytest.raises(ValueError, match="num_batches"):
        evaluate_model(StubModel(cfg.num_labels, 1), cfg, data, num_batches=0)


# ---- evaluation mode and one augmentation state per task (SPEC §8 trap 7) ------------------

def marked(c: int) -> np.ndarray:
    """Class ``c``'s image: 10c + 5 with an off-centre bar of 255, so that its four quarter
    turns differ while pixel (0, 0), read by :func:`class_of`, keeps the class."""
    image = np.full((28, 28), 10 * c + 5, np.uint8)
    image[2:5, 10:14] = 255
    return image


def quarter_turns(x: torch.Tensor) -> int:
    """The k of a normalised image [1, 28, 28] that is ``np.rot90(marked(class), k)``."""
    pixels = ((x[0] + 1) * 128).round().numpy()
    original = marked(int(class_of(x)))
    turns = [k for k in range(4) if np.array_equal(np.rot90(original, k), pixels)]
    assert len(turns) == 1, "not a quarter turn of its class image"
    return turns[0]


@pytest.fixture(scope="module")
def marked_dir(tmp_path_factory) -> Path:
    """``marked.npy``: 12 classes x 12 samples, every sample of class c is ``marked(c)``."""
    root = tmp_path_factory.mktemp("marked")
    np.save(root / "marked.npy", np.stack([np.stack([marked(c)] * 12)
                                           for c in range(NUM_CLASSES)]))
    return root


def marked_config(marked_dir: Path, **overrides) -> tuple[Config, object]:
    cfg = toy_config(marked_dir, train_dataset="marked:0-6", test_dataset="marked:7-11",
                     **overrides)
    return cfg, load_dataset(cfg.test_dataset, data_numpy_dir=cfg.data_numpy_dir)


def test_one_augmentation_state_per_task_for_its_support_and_all_query_batches(marked_dir):
    """Test-time per-label rot90: every query image of a task, in each of its query batches,
    is turned like the support image of its class (one state per task, trap 7)."""
    cfg, data = marked_config(marked_dir, random_rotate_by_90=False,
                              per_label_augmentation=False, test_random_rotate_by_90=True,
                              test_per_label_augmentation=True)
    stub = StubModel(cfg.num_labels, right_batches=3)
    evaluate_model(stub, cfg, data, num_tasks=6, num_batches=3, batch_size=10, tasks_per_call=2)
    assert len(stub.classified) == 3 * 3
    turns_seen = set()
    for query_x, weights in stub.classified:
        support_x = next(s for s, w in stub.generated if w is weights)
        for task in range(support_x.shape[0]):
            support_turns = {int(class_of(x)): quarter_turns(x) for x in support_x[task]}
            assert [quarter_turns(x) for x in query_x[task]] == [
                support_turns[int(class_of(x))] for x in query_x[task]]
            turns_seen.update(support_turns.values())
    assert len(turns_seen) > 1  # the test-time augmentation is on (and not the training one)


def test_evaluation_samples_in_evaluation_mode(marked_dir):
    """The training-only settings (random removal of support samples, the training
    augmentation: per-label rot90, set here) are off: the evaluator's sampler is built with
    ``train=False``."""
    cfg, data = marked_config(marked_dir, max_prob_remove_labeled=1.0,
                              max_prob_remove_unlabeled=1.0, per_label_augmentation=True,
                              random_rotate_by_90=True)
    assert cfg.random_rotate_by_90 and not cfg.test_random_rotate_by_90
    stub = StubModel(cfg.num_labels, right_batches=2)
    evaluate_model(stub, cfg, data, num_tasks=8, num_batches=2, batch_size=10, tasks_per_call=4)
    assert len(stub.masks) == 2
    assert all(mask is None or bool(mask.all()) for mask in stub.masks)  # nothing removed
    images = [x for support_x, _ in stub.generated for x in support_x.flatten(0, 1)]
    images += [x for query_x, _ in stub.classified for x in query_x.flatten(0, 1)]
    assert {quarter_turns(x) for x in images} == {0}  # no training augmentation


# ---- a real model -----------------------------------------------------------------------

def test_real_model_result_is_consistent_and_reproducible(toy_test):
    cfg, data = toy_test
    torch.manual_seed(0)
    model = HyperTransformer(cfg)
    a = evaluate_model(model, cfg, data, num_tasks=4, num_batches=2, batch_size=10, seed=3)
    b = evaluate_model(model, cfg, data, num_tasks=4, num_batches=2, batch_size=10, seed=3,
                       tasks_per_call=1)
    assert isinstance(a, EvalResult) and len(a.task_accuracies) == 4
    assert a.task_accuracies == b.task_accuracies
    assert a.accuracy == pytest.approx(np.mean(a.task_accuracies))
    assert a.ci95 == pytest.approx(1.96 * np.std(a.task_accuracies) / math.sqrt(4))
    # accuracies of 10-query batches are multiples of 1/10; a task's is a mean of 2
    assert all(abs(x * 20 - round(x * 20)) < 1e-5 for x in a.task_accuracies)
    assert a.seconds > 0


# ---- checkpoints: the evaluate command ----------------------------------------------------

def test_evaluate_command_writes_record_and_prints_json(trained, tmp_path, capsys):
    log_dir = tmp_path / "log"
    shutil.copytree(trained, log_dir)
    code = cli_main(["evaluate", "--log-dir", str(log_dir), "--tasks", "3", "--batches", "2",
                     "--batch-size", "10", "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "test accuracy" in out[0] and "± " in out[0] and "chance 20.00% (1/5)" in out[0]
    record = json.loads(out[-1])
    path = record_path(log_dir, "test", 2)
    assert path.name == "test-00000002.json"
    assert json.loads(path.read_text()) == record
    assert record["split"] == "test" and record["step"] == 2
    assert record["dataset"] == "toy:7-11"
    assert (record["num_tasks"], record["num_batches"], record["batch_size"]) == (3, 2, 10)
    assert record["chance"] == pytest.approx(0.2)
    assert len(record["task_accuracies"]) == 3
    assert record["accuracy"] == pytest.approx(np.mean(record["task_accuracies"]))
    assert list((log_dir / "eval").glob("events.out.tfevents.*"))  # eval_accuracy/test

    # --checkpoint with a file and another split; the record lands in the same log dir
    ckpt = list_checkpoints(log_dir)[-1]
    assert cli_main(["evaluate", "--checkpoint", str(ckpt), "--split", "train", "--tasks",
                     "2", "--batches", "1", "--batch-size", "10"]) == 0
    assert json.loads(record_path(log_dir, "train", 2).read_text())["dataset"] == "toy:0-6"


def test_a_relative_checkpoint_path_is_recorded_relative(trained, tmp_path, monkeypatch,
                                                          capsys):
    """Saved records name the checkpoint as given, so outputs kept in docs carry no machine's
    absolute paths."""
    shutil.copytree(trained, tmp_path / "log")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["evaluate", "--log-dir", "log", "--tasks", "2", "--batches", "1",
                     "--batch-size", "10", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["checkpoint"] == str(Path("log") / "checkpoints" / "ckpt-00000002.pt")
    assert json.loads(record_path("log", "test", 2).read_text()) == record


def test_evaluate_with_another_number_of_unlabelled_samples(trained, tmp_path, monkeypatch,
                                                            capsys):
    """--unlabeled u: every support set holds the checkpoint's labelled shots (here 1 per
    class) and u unlabelled samples per class (label N); the record is a variant of its own,
    beside the plain one."""
    log_dir = tmp_path / "log"
    shutil.copytree(trained, log_dir)
    labels = []
    generate = HyperTransformer.generate

    def recording(self, support_x, support_y, *args, **kwargs):
        labels.append(support_y.clone())
        return generate(self, support_x, support_y, *args, **kwargs)

    monkeypatch.setattr(HyperTransformer, "generate", recording)
    assert cli_main(["evaluate", "--log-dir", str(log_dir), "--tasks", "3", "--batches", "1",
                     "--batch-size", "10", "--unlabeled", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["variant"] == "2unlabeled"
    assert json.loads(record_path(log_dir, "test", 2, "2unlabeled").read_text()) == record
    assert labels and all(y.shape[-1] == 15 for y in labels)  # 5 x (1 + 2)
    for y in torch.cat([y.flatten(0, -2) for y in labels]):
        assert sorted(y.tolist()) == [0, 1, 2, 3, 4] + [5] * 10
    # the checkpoint's own number (0) is the plain record
    labels.clear()
    assert cli_main(["evaluate", "--log-dir", str(log_dir), "--tasks", "3", "--batches", "1",
                     "--batch-size", "10", "--unlabeled", "0"]) == 0
    assert all(y.shape[-1] == 5 for y in labels) and record_path(log_dir, "test", 2).exists()
    assert cli_main(["evaluate", "--log-dir", str(log_dir), "--unlabeled", "-1"]) == 2
    assert "unlabeled" in capsys.readouterr().err


def test_evaluate_command_errors(trained, tmp_path, capsys):
    assert cli_main(["evaluate", "--log-dir", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--watch"]) == 2
    assert "--watch needs --log-dir" in capsys.readouterr().err


# ---- --watch ----------------------------------------------------------------------------

def test_watch_picks_up_new_checkpoints_and_stops_on_done(trained, numpy_dir, tmp_path):
    log_dir = tmp_path / "log"
    shutil.copytree(trained, log_dir)
    seen: list[int] = []
    first_seen = threading.Event()
    outcome: dict[str, object] = {}

    def on_record(record, path):
        seen.append(record["step"])
        first_seen.set()

    def run():
        try:
            outcome["paths"] = watch(log_dir, "test", poll_seconds=0.05, timeout=120,
                                     overrides={"num_task_evals": 2, "num_eval_batches": 1},
                                     on_record=on_record)
        except BaseException as e:  # reported by the assertions below
            outcome["error"] = e

    watcher = threading.Thread(target=run)
    watcher.start()
    assert first_seen.wait(60), outcome
    assert watcher.is_alive()  # no done.json yet: still watching
    train(toy_config(numpy_dir), log_dir, progress=False, log_every=1)  # steps 3, 4 + done
    watcher.join(60)
    assert not watcher.is_alive() and "error" not in outcome, outcome
    assert seen == [2, 4]
    assert outcome["paths"] == [record_path(log_dir, "test", s) for s in (2, 4)]

    # everything evaluated and done.json present: returns at once, evaluating nothing
    assert watch(log_dir, "test", poll_seconds=0.05, timeout=5) == []


def test_watch_timeout(trained, tmp_path, capsys):
    log_dir = tmp_path / "log"
    shutil.copytree(trained, log_dir)
    args = ["evaluate", "--log-dir", str(log_dir), "--watch", "--poll-seconds", "0.05",
            "--timeout", "0.2", "--tasks", "2", "--batches", "1", "--batch-size", "10"]
    assert cli_main(args) == 1
    captured = capsys.readouterr()
    assert "no done.json" in captured.err
    assert "test accuracy" in captured.out  # ckpt-2 was evaluated before giving up
    assert record_path(log_dir, "test", 2).exists()


# ---- python -m hypertransformer.evaluate ----------------------------------------------------

def test_absl_entry_point(trained, numpy_dir, tmp_path, capsys):
    log_dir = tmp_path / "log"
    shutil.copytree(trained, log_dir)
    flags = [f"--train_log_dir={log_dir}", f"--data_numpy_dir={numpy_dir}",
             "--num_task_evals=2", "--num_eval_batches", "1", "--eval_batch_size=10",
             "--num_labels=5", "--noper_label_augmentation"]
    assert absl_main(flags) == 0
    out = capsys.readouterr().out
    assert "train accuracy" in out and "test accuracy" in out
    assert "no val split" in out  # toy has no preset splits
    for split in ("train", "test"):
        record = json.loads(record_path(log_dir, split, 2).read_text())
        assert (record["num_tasks"], record["num_batches"], record["batch_size"]) == (2, 1, 10)

    # a model flag that contradicts the checkpoint, and an unknown flag, are errors
    assert absl_main([f"--train_log_dir={log_dir}", "--num_labels=7"]) == 2
    assert "num_labels" in capsys.readouterr().err
    assert absl_main([f"--train_log_dir={log_dir}", "--num_task_eval=3"]) == 2
    assert "--num_task_eval" in capsys.readouterr().err
