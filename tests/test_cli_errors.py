"""The error policy of the command-line entry points (:mod:`hypertransformer.errors`).

Each expected failure goes through the real command in a subprocess: one line
``<prog>: error: <message>`` on stderr, no traceback, exit code 2.  The glyphs data are
rendered once into a cache directory of this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hypertransformer import cli, errors
from hypertransformer.evaluation import cli as evaluation_cli

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300

# A tiny glyphs_demo model (as in test_training.py), 2 episodes per step.
TINY = dict(samples_cnn=10, default_num_channels=4, num_layerwise_features=4, embedding_dim=8,
            num_layers=1, heads=1, shared_feature_extractor="2-layer", shared_features_dim=8)
TINY_SET = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
TINY_FLAGS = [f"--{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"),
                HT_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))


def run(env: dict[str, str], cwd: Path, *argv: str,
        module: str = "hypertransformer.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)


def error_line(proc: subprocess.CompletedProcess[str], prog: str) -> str:
    """The message of the one error line of a failed command (exit 2, no traceback); it ends
    stderr (training's progress bar may come before it)."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line for line in lines if ": error: " in line] == lines[-1:], proc.stderr
    assert lines[-1].startswith(f"{prog}: error: "), proc.stderr
    return lines[-1].removeprefix(f"{prog}: error: ")


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    return path


# ---- hypertransformer data ---------------------------------------------------------------


def test_data_info_unknown_dataset(env, tmp_path):
    message = error_line(run(env, tmp_path, "data", "info", "nosuch"),
                         "hypertransformer data info")
    assert "nosuch" in message


def test_data_show_option_below_one(env, tmp_path):
    message = error_line(run(env, tmp_path, "data", "show", "glyphs", "--ways", "0"),
                         "hypertransformer data show")
    assert message == "--ways must be at least 1; got 0"


def test_data_show_out_inside_a_file(env, tmp_path, a_file):
    """An OSError of the operating system names its path and what to do."""
    np.save(tmp_path / "tiny.npy", np.zeros((6, 4, 28, 28), np.uint8))
    out = a_file / "plots" / "episodes.png"
    message = error_line(run(env, tmp_path, "data", "show", "tiny", "--data-numpy-dir",
                             str(tmp_path), "--queries", "1", "--out", str(out)),
                         "hypertransformer data show")
    assert message == (f"{out.parent}: not a directory; a part of the path is a file; "
                       f"give a directory")


def test_data_download_dest_is_a_file(env, tmp_path, a_file):
    message = error_line(run(env, tmp_path, "data", "download", "omniglot", "--dest",
                             str(a_file)),
                         "hypertransformer data download")
    assert message == f"--dest {a_file} is a file; give a directory"


def test_data_prepare_without_the_files_or_with_dest_a_file(env, tmp_path, a_file):
    message = error_line(run(env, tmp_path, "data", "prepare", "tieredimagenet", "--from",
                             str(tmp_path)),
                         "hypertransformer data prepare")
    assert message.startswith(f"no tieredimagenet in {tmp_path}: looked for "
                              "{train,val,test}_images.npz + {train,val,test}_labels.pkl or ")
    message = error_line(run(env, tmp_path, "data", "prepare", "miniimagenet", "--from",
                             str(tmp_path), "--dest", str(a_file)),
                         "hypertransformer data prepare")
    assert message == f"--dest {a_file} is a file; give a directory"


def test_unusable_cache_dir(env, tmp_path, a_file):
    # Tests run as root, whom chmod does not stop: a cache dir below a file cannot be created.
    cache = a_file / "cache"
    message = error_line(run({**env, "HT_CACHE_DIR": str(cache)}, tmp_path,
                             "data", "info", "glyphs"),
                         "hypertransformer data info")
    assert message.startswith(f"cannot create the cache directory {cache} (")
    assert message.endswith("set HT_CACHE_DIR to a writable directory")


# ---- hypertransformer train ----------------------------------------------------------------


def test_train_log_dir_is_a_file(env, tmp_path, a_file):
    message = error_line(run(env, tmp_path, "train", "--preset", "glyphs_demo",
                             "--log-dir", str(a_file), "--steps", "2"),
                         "hypertransformer train")
    assert message == f"--log-dir {a_file} is a file; give a directory"
    assert a_file.read_text() == "not a directory"


def test_train_log_every_below_one(env, tmp_path):
    message = error_line(run(env, tmp_path, "train", "--preset", "glyphs_demo", "--log-dir",
                             str(tmp_path / "run"), "--log-every", "0"),
                         "hypertransformer train")
    assert message == "--log-every must be at least 1; got 0"
    assert not (tmp_path / "run").exists()


def test_train_nan_loss(env, tmp_path):
    message = error_line(run(env, tmp_path, "train", "--preset", "glyphs_demo", "--log-dir",
                             str(tmp_path / "run"), "--steps", "5", "--episodes-per-step", "2",
                             "--no-progress", *TINY_SET, "--set", "learning_rate=1e30"),
                         "hypertransformer train")
    assert message.startswith("the loss is nan at step ")
    assert message.endswith("lower learning_rate")


# ---- hypertransformer evaluate, plot, demo, model-summary ---------------------------------


@pytest.mark.parametrize("option", ["--tasks", "--batches", "--batch-size"])
def test_evaluate_option_below_one(env, tmp_path, option):
    message = error_line(run(env, tmp_path, "evaluate", "--log-dir", str(tmp_path), option,
                             "0"),
                         "hypertransformer evaluate")
    assert message == f"{option} must be at least 1; got 0"


def test_evaluate_no_checkpoint(env, tmp_path):
    message = error_line(run(env, tmp_path, "evaluate", "--log-dir", str(tmp_path)),
                         "hypertransformer evaluate")
    assert message == f"no checkpoint (checkpoints/ckpt-*.pt) in {tmp_path}"


def test_evaluate_corrupt_checkpoint(env, tmp_path):
    bad = tmp_path / "ckpt-00000001.pt"
    bad.write_bytes(b"half a checkpoint")
    message = error_line(run(env, tmp_path, "evaluate", "--checkpoint", str(bad)),
                         "hypertransformer evaluate")
    assert message.startswith(f"checkpoint {bad} is corrupt")


def metrics_line(step: int) -> str:
    return json.dumps({"step": step, "episodes": 2 * step, "wall_time": 0.5 * step,
                       "loss": 1.0 / step, "accuracy": 0.5}) + "\n"


def test_plot_half_written_last_line(env, tmp_path):
    """A run in progress: the complete lines are drawn, with one warning naming the file."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics_line(1) + metrics_line(2) + metrics_line(3)[:20])
    proc = run(env, tmp_path, "plot", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"warning: {metrics}: line 3 is incomplete (a run in progress?); plotting the 2 lines "
        f"before it"]
    assert [Path(p).name for p in proc.stdout.split()] == ["curves_episodes.png",
                                                          "curves_time.png"]
    assert all(Path(p).is_file() for p in proc.stdout.split())


def test_plot_corrupt_line(env, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics_line(1) + "{garbage\n" + metrics_line(3))
    message = error_line(run(env, tmp_path, "plot", str(tmp_path)), "hypertransformer plot")
    assert message.startswith(f"{metrics}: line 2 is not JSON (")
    assert message.endswith("delete or repair that line")


def test_plot_out_is_a_file(env, tmp_path, a_file):
    (tmp_path / "metrics.jsonl").write_text(metrics_line(1))
    message = error_line(run(env, tmp_path, "plot", str(tmp_path), "--out", str(a_file)),
                         "hypertransformer plot")
    assert message == f"--out {a_file} is a file; give a directory"


def test_demo_log_dir_is_a_file(env, tmp_path, a_file):
    message = error_line(run(env, tmp_path, "demo", "--log-dir", str(a_file)),
                         "hypertransformer demo")
    assert message == f"--log-dir {a_file} is a file; give a directory"


# ---- python -m hypertransformer.train / .evaluate ------------------------------------------


def test_train_module_log_dir_is_a_file(env, tmp_path, a_file):
    message = error_line(run(env, tmp_path, f"--train_log_dir={a_file}",
                             module="hypertransformer.train"),
                         "hypertransformer.train")
    assert message == f"--train_log_dir {a_file} is a file; give a directory"


def test_train_module_nan_loss(env, tmp_path):
    message = error_line(run(env, tmp_path, *TINY_FLAGS, "--num_labels=5",
                             "--samples_transformer=5", "--train_dataset=glyphs:train",
                             "--test_dataset=glyphs:test", "--learning_rate=1e30",
                             "--train_steps=5", f"--train_log_dir={tmp_path / 'run'}",
                             module="hypertransformer.train"),
                         "hypertransformer.train")
    assert message.startswith("the loss is nan at step ")


def test_evaluate_module_no_log_dir(env, tmp_path):
    message = error_line(run(env, tmp_path, f"--train_log_dir={tmp_path / 'nothing'}",
                             module="hypertransformer.evaluate"),
                         "hypertransformer.evaluate")
    assert message == f"{tmp_path / 'nothing'} is neither a checkpoint file nor a log directory"


# ---- the policy itself (in-process) -------------------------------------------------------


def test_unexpected_errors_keep_their_traceback(monkeypatch, tmp_path):
    def bug(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(evaluation_cli, "_plot", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["plot", str(tmp_path)])


def test_ctrl_c_exits_130(monkeypatch, tmp_path, capsys):
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation_cli, "_plot", interrupted)
    assert cli.main(["plot", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "hypertransformer plot: interrupted\n"


def test_os_error_message_names_the_path():
    error = PermissionError(13, "Permission denied", "/data/run")
    assert errors.message(error) == \
        "/data/run: permission denied; check its permissions or choose another path"
    assert errors.message(ValueError("two\n  lines")) == "two lines"


def test_require_directory(tmp_path, a_file):
    errors.require_directory(tmp_path / "new" / "run", "--log-dir")  # parents may be missing
    with pytest.raises(NotADirectoryError) as e:
        errors.require_directory(a_file / "run", "--log-dir")
    assert str(e.value) == f"--log-dir {a_file / 'run'} is inside {a_file}, which is a file; " \
                           f"give a directory"


def test_metrics_line_without_its_keys(tmp_path):
    from hypertransformer.evaluation.plot import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n' + metrics_line(2))
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 1 is not a metrics line"):
        read_metrics(tmp_path)
