"""Tests of the drawing augmentations (ours, issue 25): stroke width and warp, per image,
training only."""

from __future__ import annotations

import pytest
import torch

from hypertransformer.config import Config
from hypertransformer.data.augment import (
    AugmentationConfig,
    _warp,
    _widen,
    augment_drawings,
)
from hypertransformer.data.base import ClassDataset
from hypertransformer.data.sampler import EpisodeSampler


def stroke(size: int = 28) -> torch.Tensor:
    """[1, 1, size, size]: a 2-pixel vertical bar (255) in the middle of a dark image."""
    x = torch.zeros(1, 1, size, size)
    x[..., 6:22, 13:15] = 255.0
    return x


def ink_box(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the pixels above 64, inclusive."""
    rows = (x[0, 0] > 64).any(1).nonzero().squeeze(1)
    cols = (x[0, 0] > 64).any(0).nonzero().squeeze(1)
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_widen_adds_the_width_on_both_sides():
    x = stroke()
    assert torch.allclose(_widen(x, torch.tensor([0.0])), x, atol=1e-3)  # no width: as it was
    top, bottom, left, right = ink_box(_widen(x, torch.tensor([2.0])))
    assert (left, right) == (12, 15) and (top, bottom) == (5, 22)  # one pixel more each side
    wide = _widen(x, torch.tensor([2.0]))
    assert wide.max() <= 255.0 + 1e-3 and (wide >= x - 1e-3).all()  # dilation: never darker


def test_warp_identity_shift_and_scale():
    x = stroke()
    one, zero = torch.ones(1), torch.zeros(1, 2)
    still = torch.zeros(1, 2, 4, 4)
    assert torch.allclose(_warp(x, one, zero, still), x, atol=1e-3)
    moved = _warp(x, one, torch.tensor([[3 / 28, -2 / 28]]), still)  # 3 right, 2 up
    assert torch.allclose(moved[..., 4:20, 16:18], x[..., 6:22, 13:15], atol=1e-3)
    assert ink_box(moved) == (4, 19, 16, 17)
    top, bottom, _, _ = ink_box(_warp(x, torch.tensor([0.5]), zero, still))
    assert 7 <= bottom - top + 1 <= 9  # 16 rows of ink shrunk to about 8, about the centre
    assert abs((top + bottom) / 2 - 13.5) <= 1
    # a uniform displacement field: every pixel reads from 3 pixels to its right
    field = torch.zeros(1, 2, 4, 4)
    field[:, 0] = 3.0
    assert torch.allclose(_warp(x, one, zero, field)[..., 10:12], x[..., 13:15], atol=1e-3)


def test_each_image_drawn_independently_and_unpicked_images_unchanged():
    x = stroke().expand(2, 50, 1, 28, 28).clone()
    cfg = AugmentationConfig(stroke_probability=0.5, stroke_max_width=2.0)
    out = augment_drawings(x, cfg, torch.Generator().manual_seed(0))
    changed = (out != x).flatten(2).any(-1)  # [2, 50]
    assert 0.25 < changed.float().mean() < 0.75
    assert torch.equal(out[~changed], x[~changed])  # bit-identical when not picked
    ink = out.flatten(2).sum(-1)[changed]
    assert len(set(ink.round().tolist())) > 2  # widths vary from image to image
    again = augment_drawings(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides everything


def test_warp_parameters_stay_in_their_ranges():
    x = stroke().expand(1, 200, 1, 28, 28).clone()
    cfg = AugmentationConfig(warp_probability=1.0, warp_scale=0.25)
    out = augment_drawings(x, cfg, torch.Generator().manual_seed(1))[0]
    heights = torch.tensor([ink_box(o[None])[1] - ink_box(o[None])[0] + 1 for o in out])
    assert heights.min() >= 16 / 1.25 - 2 and heights.max() <= 16 * 1.25 + 2
    assert heights.min() < 15 and heights.max() > 17  # both ways
    shifted = augment_drawings(x, AugmentationConfig(warp_probability=1.0, warp_shift=0.1),
                               torch.Generator().manual_seed(1))[0]
    centres = torch.tensor([sum(ink_box(o[None])[2:]) / 2 for o in shifted])
    assert (centres - 13.5).abs().max() <= 2.8 + 0.5 and (centres - 13.5).abs().max() > 1


def test_negative_ranges_are_refused():
    with pytest.raises(ValueError, match="warp_scale must be >= 0"):
        AugmentationConfig(warp_probability=1.0, warp_scale=-0.1)
    assert not AugmentationConfig().drawings
    assert AugmentationConfig(warp_probability=0.1).drawings


def test_the_sampler_applies_them_in_training_only():
    images = [stroke()[0].permute(1, 2, 0).expand(6, 28, 28, 1).to(torch.uint8).numpy()] * 4
    data = ClassDataset("bars", [c.copy() for c in images], [str(i) for i in range(4)])
    cfg = Config().replace(num_labels=2, samples_transformer=2, samples_cnn=4,
                           smooth_probability=0.0, contrast_probability=0.0,
                           stroke_probability=1.0, stroke_max_width=2.0)
    train = EpisodeSampler.from_config(data, cfg, train=True, seed=0).sample(3)
    test = EpisodeSampler.from_config(data, cfg, train=False, seed=0).sample(3)
    plain = stroke() / 128 - 1
    assert torch.equal(test.support_x, plain.expand_as(test.support_x))
    assert (train.support_x.flatten(2).sum(-1) > plain.sum() + 1).all()
