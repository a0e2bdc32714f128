"""The shipped continual models (docs/results.md, "Continual HyperTransformer"): they load by
name, `evaluate --model NAME` runs the continual protocol on them, and on a few real Omniglot
test sequences they keep the ordering that docs/continual.md reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import hypertransformer
from hypertransformer.data.registry import load_split
from hypertransformer.evaluation.continual import evaluate_continual
from hypertransformer.inference import pretrained
from hypertransformer.inference.stream import ContinualModel

CONTINUAL = ("cht_omniglot_task", "cht_omniglot_class", "constpn_omniglot")
SEQUENCES = 24  # the same 24 test sequences of 10 tasks for every model


@pytest.fixture(scope="module")
def records() -> dict[tuple[str, str], dict]:
    """(model, scenario) -> the continual record on the real test classes."""
    from realdata import omniglot_dir

    out = {}
    for name, scenario in [("cht_omniglot_task", "task"), ("constpn_omniglot", "task"),
                           ("cht_omniglot_class", "class"), ("constpn_omniglot", "class")]:
        model = hypertransformer.load(name)
        config = model.config.replace(data_dir=str(omniglot_dir()), cht_scenario=scenario)
        out[name, scenario] = evaluate_continual(
            model.model, config, load_split(config, "test"), num_sequences=SEQUENCES,
            num_tasks=10, num_batches=1, batch_size=100)
    return out


def test_the_continual_models_are_shipped_and_load_by_name() -> None:
    for name in CONTINUAL:
        assert name in pretrained.available_pretrained()
        model = hypertransformer.load(name)
        assert isinstance(model, ContinualModel)
        assert (model.config.num_labels, model.config.shots) == (5, 1)
    assert hypertransformer.load("constpn_omniglot").config.model_type == "protonet"
    for name in CONTINUAL[:2]:
        config = hypertransformer.load(name).config
        assert config.model_type == "cht" and config.cht_residual
    assert hypertransformer.load("cht_omniglot_class").config.cht_scenario == "class"


def test_the_ordering_that_the_docs_report(records: dict[tuple[str, str], dict]) -> None:
    """docs/continual.md: task-incremental, the CHT within a fraction of a point of ConstPN
    (+0.26 on 512 sequences) and forgetting nothing to speak of; class-incremental, the
    class-trained CHT's first task decays far faster than ConstPN's past the 5 trained tasks
    (A[9, 0]: 36.8 % against 60.6 %)."""
    cht, constpn = records["cht_omniglot_task", "task"], records["constpn_omniglot", "task"]
    assert abs(cht["final_accuracy"] - constpn["final_accuracy"]) < 0.02
    assert cht["forgetting"] < 0.01 and cht["final_accuracy"] > 0.85
    assert constpn["forgetting"] == 0.0
    cht, constpn = records["cht_omniglot_class", "class"], records["constpn_omniglot", "class"]
    assert cht["accuracy_matrix"][9][0] < constpn["accuracy_matrix"][9][0] - 0.1
    assert cht["accuracy_matrix"][0][0] > 0.85  # where it starts: the ConstPN's first task


def test_evaluate_a_pretrained_model_by_name(tmp_path) -> None:
    from realdata import omniglot_dir

    done = subprocess.run(
        [sys.executable, "-m", "hypertransformer.cli", "evaluate", "--model", "constpn_omniglot",
         "--split", "test", "--tasks", "4", "--sequence-length", "3", "--data-dir",
         str(omniglot_dir()), "--json"], capture_output=True, text=True, cwd=tmp_path,
        timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.splitlines()[-1])
    assert record["checkpoint"] == "constpn_omniglot"
    assert record["model_type"] == "protonet" and record["num_sequences"] == 4
    assert len(record["accuracy_matrix"]) == 3
    assert "wrote" not in done.stdout  # a shipped model's record is printed, not written
    assert not (pretrained.PRETRAINED_DIR / "eval").exists()
    bad = subprocess.run([sys.executable, "-m", "hypertransformer.cli", "evaluate", "--model",
                          "no_such_model"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "pretrained names" in bad.stderr
