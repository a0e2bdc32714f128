"""Checkpoint files: atomic writes, loading errors, listing, pruning, compatibility."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from hypertransformer.config import Config
from hypertransformer.model import HyperTransformer
from hypertransformer.training import checkpoint as ckpt
from hypertransformer.training.checkpoint import (
    CheckpointError,
    check_compatible,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    model_from_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)

SMALL = Config(num_labels=3, default_num_channels=4, embedding_dim=4, num_layers=1, heads=1,
               samples_transformer=3, samples_cnn=6)


def make_state(step: int, config: Config = SMALL) -> dict:
    torch.manual_seed(step)
    model = HyperTransformer(config)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 ** t)
    return {"format_version": ckpt.FORMAT_VERSION, "step": step, "config": config.to_dict(),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "best_accuracy": None, "episodes_seen": step, "wall_time": 1.5}


def test_roundtrip(tmp_path: Path) -> None:
    state = make_state(7)
    path = checkpoint_path(tmp_path, 7)
    assert path == tmp_path / "checkpoints" / "ckpt-00000007.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == SMALL.to_dict()
    assert loaded["rng"]["python"] == state["rng"]["python"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    good = tmp_path / "good.pt"
    save_checkpoint(good, make_state(1))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="lacks format_version"):
        load_checkpoint(foreign)
    future = tmp_path / "future.pt"
    save_checkpoint(future, {**make_state(1), "format_version": 99})
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(future)


@pytest.mark.parametrize("fail_in", ["torch.save", "os.replace"])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path: Path, fail_in: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = checkpoint_path(tmp_path, 1)
    save_checkpoint(first, make_state(1))
    before = first.read_bytes()

    if fail_in == "torch.save":
        def broken_save(obj: object, f) -> None:  # noqa: ANN001
            f.write(b"partial checkpoint bytes")
            raise OSError("disk full")
        monkeypatch.setattr(ckpt.torch, "save", broken_save)
    else:
        def broken_replace(src: str, dst: str) -> None:
            raise OSError("crash before the rename")
        monkeypatch.setattr(ckpt.os, "replace", broken_replace)

    with pytest.raises(OSError):
        save_checkpoint(checkpoint_path(tmp_path, 2), make_state(2))
    with pytest.raises(OSError):
        save_checkpoint(first, make_state(3))  # overwriting in place fails the same way
    monkeypatch.undo()

    assert list_checkpoints(tmp_path) == [first]
    assert latest_checkpoint(tmp_path) == first
    assert first.read_bytes() == before
    assert load_checkpoint(first)["step"] == 1
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]


def test_leftover_temp_file_is_never_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(checkpoint_path(tmp_path, 5), make_state(5))
    # What a writer killed mid-way (SIGKILL, power loss) leaves behind.
    leftover = tmp_path / "checkpoints" / ".tmp-ckpt-00000010.pt.abc123"
    leftover.write_bytes(b"partial")
    assert list_checkpoints(tmp_path) == [checkpoint_path(tmp_path, 5)]
    prune_checkpoints(tmp_path)
    assert not leftover.exists()


def test_list_sort_and_prune(tmp_path: Path) -> None:
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    state = make_state(0)
    steps = [100, 9, 100000000, 10, 1000]
    for step in steps:
        save_checkpoint(checkpoint_path(tmp_path, step), {**state, "step": step})
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", state)
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == sorted(steps)
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 100000000)

    prune_checkpoints(tmp_path, keep=3)
    assert list_checkpoints(tmp_path) == [checkpoint_path(tmp_path, s)
                                          for s in (100, 1000, 100000000)]
    assert (tmp_path / "checkpoints" / "best.pt").exists()
    assert (tmp_path / "checkpoints" / "notes.txt").exists()


def test_compatibility_names_the_differing_fields() -> None:
    state = make_state(1)
    check_compatible(state, SMALL.replace(learning_rate=0.5, train_steps=99, dropout_rate=0.1,
                                          train_dataset="omniglot:0-9"), "x.pt")
    changed = SMALL.replace(num_labels=4, default_num_channels=8, embedding_dim=16,
                            cnn_model_name="4-layer")
    with pytest.raises(CheckpointError) as info:
        check_compatible(state, changed, "x.pt")
    message = str(info.value)
    for name in ("num_labels: 3 -> 4", "default_num_channels: 4 -> 8",
                 "embedding_dim: 4 -> 16", "cnn_model_name: '3-layer' -> '4-layer'"):
        assert name in message
    assert "learning_rate" not in message
    with pytest.raises(CheckpointError, match="optimizer: 'sgd' -> 'adamw'"):
        check_compatible(state, SMALL.replace(optimizer="adamw"), "x.pt")
    with pytest.raises(CheckpointError, match="image_size: 28 -> 32"):
        check_compatible(state, SMALL.replace(image_size=32), "x.pt")


def test_model_from_checkpoint(tmp_path: Path) -> None:
    state = make_state(3)
    save_checkpoint(checkpoint_path(tmp_path, 3), state)
    save_checkpoint(checkpoint_path(tmp_path, 1), make_state(1))
    for where in (tmp_path, tmp_path / "checkpoints", checkpoint_path(tmp_path, 3)):
        model, config, loaded = model_from_checkpoint(where)
        assert config == SMALL and loaded["step"] == 3 and not model.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, state["model"][k]), k
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        model_from_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither"):
        model_from_checkpoint(tmp_path / "missing")


def test_checkpoint_files_are_readable_by_others(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, 1)
    save_checkpoint(path, make_state(1))
    assert os.stat(path).st_mode & 0o044 == 0o044


def test_a_model_only_copy_loads_the_model_but_does_not_resume(tmp_path: Path) -> None:
    from hypertransformer import presets
    from hypertransformer.training import train
    from hypertransformer.training.checkpoint import save_model_only

    config = presets.load("glyphs_demo", embedding_dim=8, num_layers=1, samples_cnn=10,
                          episodes_per_step=1, train_steps=1, steps_between_saves=1)
    train(config, tmp_path / "run", progress=False)
    source = checkpoint_path(tmp_path / "run", 1)
    copy = checkpoint_path(tmp_path / "copy", 1)
    save_model_only(source, copy)
    assert copy.stat().st_size < 0.5 * source.stat().st_size  # AdamW's two moments dropped
    original, _, _ = model_from_checkpoint(source)
    model, loaded_config, state = model_from_checkpoint(copy)
    assert loaded_config == config.replace(train_log_dir=loaded_config.train_log_dir)
    assert state["optimizer"] == {} and state["step"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, original.state_dict()[k]), k
    with pytest.raises(CheckpointError, match="cannot resume training"):
        train(config.replace(train_steps=2), tmp_path / "copy", progress=False)
