"""The Python examples of the README and docs/model.md run as written (offline, on the
shipped glyphs_demo model and the built-in glyphs data)."""

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
