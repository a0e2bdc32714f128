"""The absl-style flags (hypertransformer.flags) and the original scripts (scripts/*.sh)."""

from __future__ import annotations

import dataclasses
import os
import shlex
from pathlib import Path

import pytest

from hypertransformer import presets
from hypertransformer.config import Config, field_names
from hypertransformer.flags import apply_overrides, parse_flags, parse_value

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SCRIPT_NAMES = [f"{data}_{shots}shot_v1.sh" for shots in (1, 5)
                for data in ("omniglot", "miniimagenet", "tieredimagenet")]


def script_flags(name: str) -> list[str]:
    """The flags a script passes to ``python -m hypertransformer.train`` (before "$@"); a
    script that runs another script passes that one's flags, then its own."""
    text = (SCRIPTS / name).read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("exec ")]
    tokens = shlex.split(line)
    assert tokens[-1] == "$@", "the script must forward its arguments last"
    if "hypertransformer.train" in tokens:
        return tokens[tokens.index("hypertransformer.train") + 1:-1]
    called = Path(tokens[1].replace("$(dirname $0)/", "")).name
    return script_flags(called) + tokens[2:-1]


def flag_name(token: str) -> str:
    name = token.lstrip("-").split("=")[0]
    return name[2:] if name not in field_names() and name.startswith("no") else name


@pytest.mark.parametrize("script,preset,shot_flags", [
    ("omniglot_1shot_v1.sh", "omniglot_1shot",
     ["--samples_transformer=20", "--samples_cnn=60", "--num_labels=20"]),
    ("omniglot_5shot_v1.sh", "omniglot_5shot",
     ["--samples_transformer=100", "--samples_cnn=100", "--num_labels=20"]),
    ("miniimagenet_1shot_v1.sh", "miniimagenet_1shot",
     ["--samples_transformer=5", "--samples_cnn=100", "--num_labels=5", "--image_size=84"]),
    ("miniimagenet_5shot_v1.sh", "miniimagenet_5shot",
     ["--samples_transformer=25", "--samples_cnn=100", "--num_labels=5", "--image_size=84"]),
    ("tieredimagenet_1shot_v1.sh", "tieredimagenet_1shot",
     ["--samples_transformer=5", "--samples_cnn=100", "--num_labels=5", "--image_size=84"]),
    ("tieredimagenet_5shot_v1.sh", "tieredimagenet_5shot",
     ["--samples_transformer=25", "--samples_cnn=100", "--num_labels=5", "--image_size=84"]),
])
def test_scripts_parse_to_their_presets(script: str, preset: str, shot_flags: list[str]) -> None:
    flags = script_flags(script)
    for flag in shot_flags:
        assert flag in flags
    config = parse_flags(flags)
    expected = presets.load(preset)
    names = {flag_name(t) for t in flags}
    assert len(names) >= 50
    for name in names:
        assert getattr(config, name) == getattr(expected, name), name
    # Fields the script leaves alone keep the original defaults, which the preset shares:
    # the whole config is the preset.
    assert config == expected


def test_scripts_are_executable_and_forward_arguments() -> None:
    for name in SCRIPT_NAMES:
        path = SCRIPTS / name
        assert os.access(path, os.X_OK), f"{name} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
        assert "exec " in path.read_text() and '"$@"' in path.read_text()


def test_bool_forms() -> None:
    on = parse_flags(["--balanced_batches", "--use_decoder=true", "--lw_generate_bias=1",
                      "--random_rotate_by_90=True", "--per_label_augmentation=yes"])
    assert (on.balanced_batches, on.use_decoder, on.lw_generate_bias, on.random_rotate_by_90,
            on.per_label_augmentation) == (True, True, True, True, True)
    base = Config(balanced_batches=True, use_decoder=True, lw_generate_bias=True,
                  random_rotate_by_90=True)
    off = parse_flags(["--nobalanced_batches", "--use_decoder=false", "--lw_generate_bias=0",
                       "--random_rotate_by_90=False"], base)
    assert (off.balanced_batches, off.use_decoder, off.lw_generate_bias,
            off.random_rotate_by_90) == (False, False, False, False)
    # A bool flag never takes the next argument as its value.
    c = parse_flags(["--balanced_batches", "--num_labels=3"])
    assert c.balanced_batches is True and c.num_labels == 3
    with pytest.raises(ValueError, match="balanced_batches expects bool; got 'maybe'"):
        parse_flags(["--balanced_batches=maybe"])


def test_value_forms_and_types() -> None:
    c = parse_flags(["--num_labels", "7", "-learning_rate=0.5", "--cnn_model_name",
                     "maxpool-4-layer", "--test_angle_range", "-2.5", "--train_log_dir=/x y",
                     "--num_layerwise_features=", "--data_dir=None"])
    assert c.num_labels == 7 and isinstance(c.num_labels, int)
    assert c.learning_rate == 0.5 and c.cnn_model_name == "maxpool-4-layer"
    assert c.test_angle_range == -2.5 and c.train_log_dir == "/x y"
    assert c.num_layerwise_features is None and c.data_dir is None
    assert parse_flags(["--num_layerwise_features=8"]).num_layerwise_features == 8
    assert parse_flags(["--data_dir=/d"]).data_dir == "/d"
    # learning_rate_decay_steps is a float flag; an int literal is accepted.
    assert parse_flags(["--learning_rate_decay_steps=100000"]).learning_rate_decay_steps == 1e5
    # The last occurrence wins (a script's "$@" overrides its own flags).
    assert parse_flags(["--num_labels=20", "--num_labels=5"]).num_labels == 5
    # Flags after "--" are not allowed; "--" alone ends the flags.
    assert parse_flags(["--num_labels=5", "--"]).num_labels == 5


def test_every_config_field_is_a_flag() -> None:
    default = Config()
    for f in dataclasses.fields(Config):
        value = getattr(default, f.name)
        if isinstance(value, bool):
            assert getattr(parse_flags([f"--{f.name}"]), f.name) is True
            assert getattr(parse_flags([f"--no{f.name}"]), f.name) is False
        else:
            text = "" if value is None else str(value)
            assert getattr(parse_flags([f"--{f.name}={text}"]), f.name) == value, f.name
    # The run flags of the original binary are among them.
    c = parse_flags(["--train_log_dir=/logs", "--data_dir=/data", "--data_numpy_dir=/np",
                     "--num_task_evals=8", "--num_eval_batches=2", "--eval_batch_size=10",
                     "--eval_datasets=omniglot"])
    assert (c.train_log_dir, c.data_dir, c.data_numpy_dir) == ("/logs", "/data", "/np")
    assert (c.num_task_evals, c.num_eval_batches, c.eval_batch_size) == (8, 2, 10)


def test_unknown_and_malformed_flags_are_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown flag '--num_lables'.*--num_labels"):
        parse_flags(["--num_lables=3"])
    with pytest.raises(ValueError, match="unknown flag '--data_cache_dir'"):
        parse_flags(["--data_cache_dir=/x"])
    with pytest.raises(ValueError, match="not a boolean flag"):
        parse_flags(["--nonum_labels"])
    with pytest.raises(ValueError, match="needs a value"):
        parse_flags(["--num_labels"])
    with pytest.raises(ValueError, match="num_labels expects int; got 'x'"):
        parse_flags(["--num_labels=x"])
    with pytest.raises(ValueError, match="positional argument 'extra'"):
        parse_flags(["extra"])
    with pytest.raises(ValueError, match="positional"):
        parse_flags(["--", "--num_labels=3"])


def test_parse_flags_keeps_base_fields() -> None:
    base = presets.load("omniglot_1shot")
    c = parse_flags(["--num_labels=5"], base)
    assert c.num_labels == 5
    assert c.replace(num_labels=20) == base


def test_apply_overrides() -> None:
    c = apply_overrides(Config(), ["learning_rate=0.1", "use_decoder=true", "num_labels=3",
                                   "num_layerwise_features=None", "train_dataset=omniglot:0-9"])
    assert (c.learning_rate, c.use_decoder, c.num_labels) == (0.1, True, 3)
    assert c.num_layerwise_features is None and c.train_dataset == "omniglot:0-9"
    with pytest.raises(ValueError, match=r"unknown config field 'learning_rat'.*learning_rate"):
        apply_overrides(Config(), ["learning_rat=0.1"])
    with pytest.raises(ValueError, match="expected field=value"):
        apply_overrides(Config(), ["learning_rate"])
    assert parse_value("embedding_dim", "32") == 32
