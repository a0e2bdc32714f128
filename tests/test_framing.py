"""Tests of ink framing (data.framing, issue 25): drawings scaled and centred on their ink, in
training data and in a user's images alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypertransformer import presets
from hypertransformer.data.framing import FRAME_FILL, frame_ink
from hypertransformer.data.registry import load_split
from hypertransformer.inference.images import Preprocessing


def ink_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), inclusive, of the pixels above 64 of [H, W, 1]."""
    ink = image[..., 0] > 64
    rows, cols = np.where(ink.any(1))[0], np.where(ink.any(0))[0]
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_the_ink_box_is_centred_and_its_longer_side_fills_the_frame():
    x = np.zeros((3, 28, 28, 1), np.uint8)
    x[0, 2:8, 3:6] = 255  # a small block in a corner, 6 x 3
    x[1, 5:25, 10:12] = 200  # a tall bar, 20 x 2
    out = frame_ink(x)
    for image in out[:2]:
        top, bottom, left, right = ink_box(image)
        assert abs((top + bottom) / 2 - 13.5) <= 0.5 and abs((left + right) / 2 - 13.5) <= 0.5
        assert abs(bottom - top + 1 - FRAME_FILL * 28) <= 2  # 18 rows, up to the blurred edge
    _, _, left, right = ink_box(out[0])
    assert 8 <= right - left + 1 <= 11  # the aspect ratio is kept: 3 columns become 9
    assert out[0].max() == 255 and np.array_equal(out[2], x[2])  # blank: as it was


def test_framed_images_are_framed_again_unchanged_up_to_blur():
    x = np.zeros((1, 28, 28, 1), np.uint8)
    x[0, 4:10, 15:27] = 255
    once = frame_ink(x)
    assert ink_box(frame_ink(once)[0]) == ink_box(once[0])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        frame_ink(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        frame_ink(np.zeros((2, 28, 28, 1), np.float32))
    assert frame_ink(np.zeros((0, 28, 28, 1), np.uint8)).shape == (0, 28, 28, 1)


def test_a_frame_ink_model_frames_its_data_and_a_users_images(tmp_path):
    config = presets.load("glyphs_demo").replace(frame_ink=True)
    framed = load_split(config, "test")
    plain = load_split(config.replace(frame_ink=False), "test")
    assert framed.class_names == plain.class_names
    assert np.array_equal(framed.classes[3], frame_ink(plain.classes[3]))
    prep = Preprocessing.from_config(config)
    assert prep.frame_ink and not Preprocessing.from_config(presets.load("glyphs_demo")).frame_ink
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    old_export = {k: v for k, v in prep.to_dict().items() if k != "frame_ink"}
    assert not Preprocessing.from_dict(old_export).frame_ink  # exports before the flag
    images = list(plain.classes[3][:4, ..., 0])
    expected = torch.from_numpy(frame_ink(plain.classes[3][:4])).permute(0, 3, 1, 2) / 128 - 1
    assert torch.equal(prep(images, "light"), expected)
