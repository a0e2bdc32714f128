"""The Python examples of the README, docs/model.md and docs/use.md run as written (offline,
on the shipped models and the built-in glyphs data)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python_block(doc: str, heading: str) -> str:
    """The first ```python block after ``heading`` in ``doc``."""
    text = (REPO / doc).read_text()
    after = text[text.index(heading):]
    block = re.search(r"```python\n(.*?)```", after, re.S)
    assert block, f"no python block after {heading!r} in {doc}"
    return block[1]


@pytest.mark.parametrize("doc, heading", [
    ("README.md", "## Generate a CNN from five pictures"),
    ("docs/model.md", "## Batched over episodes"),
])
def test_example_runs(doc: str, heading: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", python_block(doc, heading)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    if doc == "README.md":  # five predicted class names, and the exported CNN
        assert done.stdout.count("U+") == 5, done.stdout
        assert (tmp_path / "glyphs_cnn.pt").stat().st_size > 0
    else:
        assert done.stdout.strip() == "torch.Size([4, 25, 5]) torch.Size([4, 8, 5])"


def test_stream_example_runs(tmp_path: Path) -> None:
    """docs/use.md's continual example; until ``cht_omniglot_class`` is shipped, with a tiny
    class-incremental CHT of random weights in its place."""
    from test_inference import bare_checkpoint

    from hypertransformer import presets
    from hypertransformer.inference import available_pretrained
    from hypertransformer.model import ContinualHyperTransformer

    code = python_block("docs/use.md", "## Learning task after task (Continual HT)")
    if "cht_omniglot_class" not in available_pretrained():
        config = presets.load("cht_omniglot_class", default_num_channels=4, embedding_dim=8,
                              num_layers=1, heads=1, num_layerwise_features=4)
        model = ContinualHyperTransformer(config)
        path = bare_checkpoint(tmp_path / "cht.pt", model, config)
        code = code.replace('"cht_omniglot_class"', repr(str(path)))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and lines[0].count("U+") == 15 and lines[1].count("U+") == 5
    assert (tmp_path / "stream.pt").stat().st_size > 0
