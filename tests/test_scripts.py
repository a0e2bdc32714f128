"""Each of the six original scripts (SPEC §6) trains for 2 steps, and the evaluator then runs on
its checkpoint with the same flags, as documented in the scripts: Omniglot on the real data
(tests/realdata.py), miniImageNet and tieredImageNet on tiny fixtures in their real forms
(tests/imagenet_fixtures.py).  Only the batch sizes shrink; the model is the script's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from imagenet_fixtures import write_mini_pickles, write_tiered
from realdata import omniglot_dir

REPO = Path(__file__).resolve().parents[1]
EVAL_FLAGS = ["--num_task_evals=2", "--num_eval_batches=1", "--eval_batch_size=20"]


@pytest.fixture(scope="module")
def imagenet_dirs(tmp_path_factory) -> dict[str, Path]:
    """5 images per class (the 5-shot support), and one cache for both scripts of a dataset."""
    root = tmp_path_factory.mktemp("imagenet")
    return {"miniimagenet": write_mini_pickles(root / "mini", per_class=5),
            "tieredimagenet": write_tiered(root / "tiered", "npz", per_class=5),
            "cache": root / "cache"}


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet", "tieredimagenet"])
@pytest.mark.parametrize("shots", [1, 5])
def test_script_trains_and_the_evaluator_runs_beside_it(tmp_path, imagenet_dirs, dataset,
                                                        shots):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    if dataset == "omniglot":
        data_dir = omniglot_dir()  # the real data; the user's cache, like tests/test_training
    else:
        data_dir = imagenet_dirs[dataset]
        env["HT_CACHE_DIR"] = str(imagenet_dirs["cache"])
    log_dir = tmp_path / "run"
    common = [f"--data_dir={data_dir}", f"--train_log_dir={log_dir}"]
    run([str(REPO / "scripts" / f"{dataset}_{shots}shot_v1.sh"), *common, "--train_steps=2",
         "--samples_cnn=" + ("60" if dataset == "omniglot" else "10")], env)
    assert json.loads((log_dir / "done.json").read_text()) == {"step": 2, "finished": True}
    config = json.loads((log_dir / "config.json").read_text())
    assert config["samples_transformer"] == {1: 1, 5: 5}[shots] * config["num_labels"]
    assert config["train_dataset"].startswith(dataset)

    proc = run([sys.executable, "-m", "hypertransformer.evaluate", *common, *EVAL_FLAGS], env)
    for split in ("train", "val", "test"):
        record = json.loads((log_dir / "eval" / f"{split}-00000002.json").read_text())
        assert record["step"] == 2 and record["num_tasks"] == 2
        assert record["dataset"].startswith(dataset) and 0 <= record["accuracy"] <= 1
        assert f"{split} accuracy" in proc.stdout
