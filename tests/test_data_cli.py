"""``hypertransformer data info|show`` on a tiny NumPy cache and on the real Omniglot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realdata import omniglot_dir

from hypertransformer.cli import main

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture()
def numpy_dir(tmp_path: Path) -> Path:
    """``tiny.npy``: 6 classes of 4 images, 28x28 gray; class c is filled with 40·c."""
    arr = np.zeros((6, 4, 28, 28), np.uint8)
    arr += (40 * np.arange(6, dtype=np.uint8))[:, None, None, None]
    np.save(tmp_path / "tiny.npy", arr)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["data", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json(numpy_dir: Path, capsys):
    code, out, _ = run(capsys, "info", "tiny", "--data-numpy-dir", str(numpy_dir), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["name"] == "tiny"
    assert info["num_classes"] == 6
    assert info["samples_per_class"] == {"min": 4, "max": 4, "total": 24}
    assert info["image_shape"] == [28, 28, 1]


def test_info_text_with_ranges_and_resize(numpy_dir: Path, capsys):
    code, out, _ = run(capsys, "info", "tiny:1-3,5", "--data-numpy-dir", str(numpy_dir),
                       "--image-size", "14")
    assert code == 0
    assert out.strip() == ("tiny:1-3,5: 4 classes, 4 images per class (16 in all), "
                           "image 14x14x1 (H x W x C)")


def test_info_text_with_unequal_classes(tmp_path: Path, capsys):
    # A folder cache: one file holding classes of 3 and 5 images, 8x8 gray.
    (tmp_path / "ragged").mkdir()
    classes = np.empty(2, dtype=object)
    classes[0], classes[1] = np.zeros((3, 8, 8), np.uint8), np.zeros((5, 8, 8), np.uint8)
    np.save(tmp_path / "ragged" / "part0.npy", classes, allow_pickle=True)
    code, out, _ = run(capsys, "info", "ragged", "--data-numpy-dir", str(tmp_path),
                       "--image-size", "8")
    assert code == 0
    assert out.strip() == ("ragged: 2 classes, 3..5 images per class (8 in all), "
                           "image 8x8x1 (H x W x C)")


def test_info_bad_input_is_a_message(numpy_dir: Path, capsys):
    code, _, err = run(capsys, "info", "nosuch", "--data-numpy-dir", str(numpy_dir))
    assert code == 2 and "unknown dataset 'nosuch'" in err
    code, _, err = run(capsys, "info", "tiny:0-9", "--data-numpy-dir", str(numpy_dir))
    assert code == 2 and "asked for up to 9" in err


def test_show_writes_a_png(numpy_dir: Path, tmp_path: Path, capsys):
    out_png = tmp_path / "sub" / "episodes.png"
    code, out, _ = run(capsys, "show", "tiny", "--data-numpy-dir", str(numpy_dir), "--ways", "3",
                       "--shots", "1", "--queries", "2", "--episodes", "2", "--seed", "1",
                       "--out", str(out_png))
    assert code == 0
    assert out.strip() == str(out_png)
    with Image.open(out_png) as img:
        # 2 episodes x (1 + 2) rows by 3 columns of ~110 px cells, plus the title.
        assert img.format == "PNG"
        assert 300 < img.width < 450 and 650 < img.height < 850


def test_show_bad_sizes_are_messages(numpy_dir: Path, tmp_path: Path, capsys):
    out_png = str(tmp_path / "x.png")
    code, _, err = run(capsys, "show", "tiny", "--data-numpy-dir", str(numpy_dir),
                       "--ways", "7", "--out", out_png)
    assert code == 2 and "num_labels=7 but the split 'tiny' has only 6 classes" in err
    code, _, err = run(capsys, "show", "tiny", "--data-numpy-dir", str(numpy_dir),
                       "--ways", "2", "--shots", "5", "--out", out_png)
    assert code == 2 and "holds only 4 images" in err
    code, _, err = run(capsys, "show", "tiny", "--data-numpy-dir", str(numpy_dir),
                       "--episodes", "0", "--out", out_png)
    assert code == 2 and "--episodes must be at least 1" in err
    assert not Path(out_png).exists()


def test_info_real_omniglot(capsys):
    code, out, _ = run(capsys, "info", "omniglot", "--data-dir", str(omniglot_dir()), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["num_classes"] == 1623
    assert info["samples_per_class"] == {"min": 20, "max": 20, "total": 32460}
    assert info["image_shape"] == [28, 28, 1]
