"""Tests of the episode augmentations (SPEC §2.4, trap 7) against hand-computed expectations."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hypertransformer import presets
from hypertransformer.config import Config
from hypertransformer.data import augment
from hypertransformer.data.augment import (
    AugmentationConfig,
    AugmentationState,
    Augmenter,
    _adjust_hue,
    _contrast,
    _crop_and_resize,
    _resize,
    _rotate,
    _smooth,
    augment_natural_images,
)

ALL_ON = AugmentationConfig(
    random_rotate_by_90=True, rotation_probability=1.0, roll_probability=1.0,
    resize_probability=1.0, contrast_probability=1.0, smooth_probability=1.0,
    negate_probability=1.0,
)


def quiet_state(episodes: int = 1, slots: int = 1, **fields: list) -> AugmentationState:
    """A state where nothing fires, with some fields overridden by ``[T][L]`` nested lists."""
    shape = (episodes, slots)
    state = AugmentationState(
        rot90_k=torch.zeros(shape, dtype=torch.long),
        rotate=torch.zeros(shape, dtype=torch.bool), angle=torch.zeros(shape),
        roll=torch.zeros(shape, dtype=torch.bool), roll_h=torch.zeros(shape),
        roll_w=torch.zeros(shape),
        resize=torch.zeros(shape, dtype=torch.bool), resize_factor=torch.ones(shape),
        contrast=torch.zeros(shape, dtype=torch.bool), alpha=torch.ones(shape),
        smooth=torch.zeros(shape, dtype=torch.bool), negate=torch.zeros(shape, dtype=torch.bool),
    )
    for name, value in fields.items():
        old = getattr(state, name)
        setattr(state, name, torch.tensor(value, dtype=old.dtype))
    return state


def one(image: torch.Tensor) -> torch.Tensor:
    """[H, W] -> [1, 1, 1, H, W]."""
    return image.float()[None, None, None]


def run(cfg: AugmentationConfig, image: torch.Tensor, state: AugmentationState) -> torch.Tensor:
    """Augment one [H, W] image of label 0; returns [H, W]."""
    return Augmenter(cfg)(one(image), torch.zeros(1, 1, dtype=torch.long), state)[0, 0, 0]


GRID3 = torch.arange(9.0).reshape(3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]


# ---- op 1: rot90 ---------------------------------------------------------------------------------

def test_rot90_counter_clockwise_per_label():
    # Four copies of the 3x3 grid with labels 0..3; label j gets k = j quarter turns.
    images = GRID3[None, None, None].expand(1, 4, 1, 3, 3).clone()
    labels = torch.arange(4)[None]
    state = quiet_state(1, 4, rot90_k=[[0, 1, 2, 3]])
    out = Augmenter(AugmentationConfig(random_rotate_by_90=True))(images, labels, state)[0, :, 0]
    assert torch.equal(out[0], GRID3)
    # Counter-clockwise: the right column (2, 5, 8) becomes the top row.
    assert torch.equal(out[1], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))
    assert torch.equal(out[2], torch.tensor([[8.0, 7, 6], [5, 4, 3], [2, 1, 0]]))
    assert torch.equal(out[3], torch.tensor([[6.0, 3, 0], [7, 4, 1], [8, 5, 2]]))


def test_rot90_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        run(AugmentationConfig(random_rotate_by_90=True), torch.zeros(3, 4), quiet_state())


# ---- op 2: rotation ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [4, 5])
@pytest.mark.parametrize(("angle", "k"), [(90.0, 1), (180.0, 2), (-90.0, 3), (270.0, 3)])
def test_rotation_by_multiples_of_90_equals_rot90(size, angle, k):
    image = torch.arange(float(size * size)).reshape(size, size) + 1
    cfg = AugmentationConfig(rotation_probability=1.0)
    out = run(cfg, image, quiet_state(rotate=[[True]], angle=[[angle]]))
    assert torch.equal(out, torch.rot90(image, k, dims=(0, 1)))


def test_rotation_45_nearest_fill_zero():
    image = torch.arange(25.0).reshape(5, 5) + 1
    out = _rotate(one(image)[0], torch.tensor([45.0]))[0, 0]
    # Output (y, x) reads source (round(c(x-2) - s(y-2) + 2), round(s(x-2) + c(y-2) + 2)).
    assert out[2, 2] == image[2, 2]  # the centre stays
    for y, x in [(0, 0), (0, 4), (4, 0), (4, 4)]:  # corners read outside: fill 0
        assert out[y, x] == 0
    # (y, x) = (2, 4): dx = 2, dy = 0 -> source x = 2 + 1.414 -> 3, y = 2 + 1.414 -> 3.
    assert out[2, 4] == image[3, 3]
    # (y, x) = (0, 2): dx = 0, dy = -2 -> source x = 3.41 -> 3, y = 0.59 -> 1.
    assert out[0, 2] == image[1, 3]


# ---- op 3: roll ----------------------------------------------------------------------------------

def test_roll_shift_amounts():
    image = torch.arange(20.0).reshape(4, 5)
    # r_h = 0.3 -> int(1.2) = 1 row down; r_w = -0.3 -> int(-1.5) = -1 (truncation): 1 col left.
    out = run(AugmentationConfig(roll_probability=1.0), image,
              quiet_state(roll=[[True]], roll_h=[[0.3]], roll_w=[[-0.3]]))
    assert out[0, 0] == 16  # source (row 3, col 1)
    assert out[1, 4] == 0  # source (row 0, col 0)
    assert torch.equal(out, torch.roll(image, shifts=(1, -1), dims=(0, 1)))


# ---- op 4: resize --------------------------------------------------------------------------------

def test_resize_shrinks_and_centres_on_zero_border():
    out = run(AugmentationConfig(resize_probability=1.0), torch.full((10, 10), 100.0),
              quiet_state(resize=[[True]], resize_factor=[[0.75]]))
    expected = torch.zeros(10, 10)
    expected[1:8, 1:8] = 100.0  # n = int(7.5) = 7, offset (10 - 7) // 2 = 1
    assert torch.allclose(out, expected, atol=1e-4)


def test_resize_bilinear_half_pixel_centres():
    image = torch.tensor([0.0, 10, 20, 30]).expand(4, 4)  # column ramp
    out = _resize(one(image)[0], torch.tensor([0.75]))[0, 0]
    # n = 3, offset 0; output column j reads source (j + 0.5) * 4 / 3 - 0.5 = 1/6, 3/2, 17/6.
    row = torch.tensor([10 / 6, 15.0, 170 / 6, 0.0])
    assert torch.allclose(out[:3], row.expand(3, 4), atol=1e-4)
    assert torch.equal(out[3], torch.zeros(4))


# ---- op 5: contrast ------------------------------------------------------------------------------

def test_contrast_formula_and_minmax():
    pixels = [0.0, 64.0, 128.0, 255.0]
    image = torch.stack([torch.tensor(pixels).reshape(2, 2), torch.full((2, 2), 50.0)])
    alpha = 2.0
    out = _contrast(image[None], torch.tensor([alpha]))[0]
    v = [p / 128 - 1 for p in pixels]
    m = sum(v) / 4
    y = [math.tanh((vi - m) * alpha) / alpha + m for vi in v]
    expected = [255 * (yi - min(y)) / (max(y) - min(y) + 1e-7) for yi in y]
    assert torch.allclose(out[0].flatten(), torch.tensor(expected), atol=1e-3)
    assert out[0].min() == 0 and out[0].max() == pytest.approx(255, abs=1e-3)
    # A flat channel: y = m everywhere, min-max gives 0 / (0 + 1e-7) = 0.
    assert torch.equal(out[1], torch.zeros(2, 2))


# ---- op 6: smooth --------------------------------------------------------------------------------

def test_smooth_box_filter_zero_padding_then_minmax():
    out = _smooth(one(GRID3)[0])[0, 0]
    # 3x3 sums with zero padding: corners 8, 12, 20, 24; edges 15, 21, 27, 33; centre 36.
    sums = torch.tensor([[8.0, 15, 12], [21, 36, 27], [20, 33, 24]])
    expected = 255 * (sums / 9 - 8 / 9) / (36 / 9 - 8 / 9)
    assert torch.allclose(out, expected, atol=1e-3)


# ---- op 7: negate, 0..255 semantics (trap 7) ----------------------------------------------------

def test_negate_is_255_minus_x():
    image = torch.tensor([[0.0, 10.0], [128.0, 255.0]])
    out = run(AugmentationConfig(negate_probability=1.0), image, quiet_state(negate=[[True]]))
    assert torch.equal(out, torch.tensor([[255.0, 245.0], [127.0, 0.0]]))


def test_ops_before_normalisation():
    image = torch.tensor([[0.0, 255.0]]).expand(2, 2)
    aug = Augmenter(AugmentationConfig(negate_probability=1.0))
    out = aug.normalize(aug(one(image), torch.zeros(1, 1, dtype=torch.long),
                            quiet_state(negate=[[True]])), image_size=2)[0, 0, 0]
    # negate on 0..255 then x/128-1: 0 -> 255 -> 0.9921875; 255 -> 0 -> -1.
    assert torch.equal(out, torch.tensor([[0.9921875, -1.0], [0.9921875, -1.0]]))


def test_normalize_resizes_bilinear_and_scales():
    image = torch.tensor([0.0, 10, 20, 30]).expand(4, 4)
    out = Augmenter.normalize(one(image), image_size=2)[0, 0, 0]
    # Half-pixel centres: output columns read source 0.5 and 2.5 -> 5 and 25.
    assert torch.allclose(out, torch.tensor([5 / 128 - 1, 25 / 128 - 1]).expand(2, 2))
    same_size = Augmenter.normalize(one(torch.tensor([[0.0, 128.0], [255.0, 64.0]])), 2)
    assert torch.equal(same_size[0, 0, 0], torch.tensor([[-1.0, 0.0], [0.9921875, -0.5]]))


# ---- order, bit-identity, per-label, determinism ----------------------------------------------

def test_op_order_1_to_7():
    torch.manual_seed(0)
    image = torch.rand(6, 6) * 255
    state = quiet_state(
        rot90_k=[[1]], rotate=[[True]], angle=[[90.0]], roll=[[True]], roll_h=[[0.2]],
        roll_w=[[0.0]], resize=[[True]], resize_factor=[[0.75]], contrast=[[True]],
        alpha=[[1.5]], smooth=[[True]], negate=[[True]])
    out = run(ALL_ON, image, state)
    x = torch.rot90(image, 2, dims=(0, 1))  # rot90 k=1, then rotation by 90 degrees
    x = torch.roll(x, shifts=1, dims=0)  # int(0.2 * 6) = 1
    x = _resize(x[None, None], torch.tensor([0.75]))  # n = int(4.5) = 4, offset 1
    x = _contrast(x, torch.tensor([1.5]))
    expected = 255.0 - _smooth(x)[0, 0]
    assert torch.allclose(out, expected, atol=1e-3)
    # The order matters: negating before smoothing gives another image.
    assert not torch.allclose(_smooth(255.0 - x)[0, 0], expected, atol=1.0)


def test_not_firing_is_bit_identical():
    torch.manual_seed(1)
    images = torch.rand(2, 3, 1, 6, 6) * 255
    labels = torch.tensor([[0, 1, 1], [1, 0, 0]])
    # Every op enabled in the config, but only label 1 of episode 0 fires anything.
    fire = [[False, True], [False, False]]
    state = quiet_state(
        2, 2, rot90_k=[[0, 1], [0, 0]], rotate=fire, angle=[[0.0, 10.0], [0.0, 0.0]],
        roll=fire, roll_h=[[0.2, 0.2], [0.2, 0.2]], roll_w=[[0.2, 0.2], [0.2, 0.2]],
        resize=fire, resize_factor=[[0.8, 0.8], [0.8, 0.8]], contrast=fire, smooth=fire,
        negate=fire)
    out = Augmenter(dataclasses.replace(ALL_ON, per_label=True))(images, labels, state)
    changed = labels.eq(1) & torch.tensor([[True], [False]])
    for t in range(2):
        for m in range(3):
            same = torch.equal(out[t, m], images[t, m])
            assert same != bool(changed[t, m])
    assert images.shape == out.shape


def test_per_label_same_label_same_transform():
    aug = Augmenter(AugmentationConfig(random_rotate_by_90=True, per_label=True))
    state = aug.draw(3, 20, torch.Generator().manual_seed(0))
    assert state.rot90_k.shape == (3, 20)
    labels = torch.arange(20).repeat(2)[None].expand(3, 40)
    images = torch.arange(16.0).reshape(4, 4).expand(3, 40, 1, 4, 4)
    out = aug(images, labels, state)
    for t in range(3):
        for j in range(20):
            expected = torch.rot90(images[0, 0, 0], int(state.rot90_k[t, j]), dims=(0, 1))
            assert torch.equal(out[t, j, 0], expected)
            assert torch.equal(out[t, j + 20, 0], expected)
    assert len(set(state.rot90_k.flatten().tolist())) == 4  # labels do differ


def test_episode_state_shared_by_all_images_and_by_support_and_query():
    cfg = AugmentationConfig(random_rotate_by_90=True, rotation_probability=0.5,
                             roll_probability=0.5, contrast_probability=0.5,
                             smooth_probability=0.5, negate_probability=0.5)
    aug = Augmenter(cfg)
    state = aug.draw(4, 5, torch.Generator().manual_seed(3))
    assert state.rot90_k.shape == (4, 1)
    torch.manual_seed(2)
    base = torch.rand(4, 1, 1, 7, 7) * 255
    support = aug(base.expand(4, 5, 1, 7, 7), torch.arange(5).expand(4, 5), state)
    query = aug(base.expand(4, 3, 1, 7, 7), torch.tensor([4, 0, 2]).expand(4, 3), state)
    for t in range(4):
        for m in range(5):
            assert torch.equal(support[t, m], support[t, 0])
        for m in range(3):
            assert torch.equal(query[t, m], support[t, 0])


def test_draw_deterministic_and_ranges():
    cfg = AugmentationConfig(random_rotate_by_90=True, rotation_probability=0.5,
                             angle_range=30.0, roll_probability=1.0, resize_probability=0.0,
                             contrast_probability=0.5, per_label=True)
    aug = Augmenter(cfg)
    a = aug.draw(50, 8, torch.Generator().manual_seed(7))
    b = aug.draw(50, 8, torch.Generator().manual_seed(7))
    c = aug.draw(50, 8, torch.Generator().manual_seed(8))
    for f in dataclasses.fields(AugmentationState):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name))
    assert not torch.equal(a.angle, c.angle)
    assert set(a.rot90_k.flatten().tolist()) == {0, 1, 2, 3}
    assert a.angle.abs().max() <= 30.0 and a.angle.abs().max() > 25.0
    assert a.roll.all() and not a.resize.any() and not a.smooth.any()
    assert 0.35 < a.rotate.float().mean() < 0.65
    assert a.roll_h.abs().max() < 0.3 and a.roll_w.abs().max() < 0.3
    assert (a.resize_factor >= 0.7).all() and (a.resize_factor < 1.0).all()
    assert (a.alpha >= 0.5).all() and (a.alpha < 2.5).all()
    no_rot = Augmenter(AugmentationConfig()).draw(10, 4, torch.Generator().manual_seed(0))
    assert not no_rot.rot90_k.any()


# ---- configuration -------------------------------------------------------------------------------

def test_from_config_train_and_test_fallbacks():
    cfg = Config().replace(
        random_rotate_by_90=True, test_random_rotate_by_90=False,
        per_label_augmentation=True, test_per_label_augmentation=False,
        rotation_probability=0.3, test_rotation_probability=-1.0,
        smooth_probability=0.2, test_smooth_probability=0.1,
        contrast_probability=0.4, test_contrast_probability=0.0,
        angle_range=30.0, test_angle_range=-1.0, roll_probability=0.25,
        apply_image_augmentations=True, augment_images_individually=True)
    train = AugmentationConfig.from_config(cfg, train=True)
    assert train == AugmentationConfig(
        random_rotate_by_90=True, rotation_probability=0.3, angle_range=30.0,
        roll_probability=0.25, contrast_probability=0.4, smooth_probability=0.2,
        per_label=True, image_augmentations=True, augment_images_individually=True)
    test = AugmentationConfig.from_config(cfg, train=False)
    assert test == AugmentationConfig(
        random_rotate_by_90=False, rotation_probability=0.3, angle_range=30.0,
        roll_probability=0.25, contrast_probability=0.0, smooth_probability=0.1,
        per_label=False, image_augmentations=False)
    # The test booleans are taken as they are, also when only the test one is set.
    only_test = Config().replace(test_random_rotate_by_90=True, test_per_label_augmentation=True)
    t = AugmentationConfig.from_config(only_test, train=False)
    assert t.random_rotate_by_90 and t.per_label
    assert not AugmentationConfig.from_config(only_test, train=True).random_rotate_by_90


def test_omniglot_preset_rot90_only_at_training():
    cfg = presets.load("omniglot_1shot")
    train = AugmentationConfig.from_config(cfg, train=True)
    test = AugmentationConfig.from_config(cfg, train=False)
    assert train.active and train.random_rotate_by_90 and train.per_label
    assert train.rotation_probability == 0 and train.smooth_probability == 0
    assert not test.active and not test.image_augmentations
    assert not AugmentationConfig().active
    assert AugmentationConfig(negate_probability=0.1).active


# ---- natural-image augmentations -----------------------------------------------------------------

def test_crop_and_resize_sampling():
    image = torch.arange(5.0).expand(5, 5)  # x[h, w] = w
    out = _crop_and_resize(one(image)[0], torch.tensor([0.0]), torch.tensor([0.25]),
                           torch.tensor([0.5]))[0, 0]
    # Column j reads source (0.25 + 0.5 j / 4) * 4 = 1 + 0.5 j.
    assert torch.allclose(out, torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0]).expand(5, 5), atol=1e-5)
    rows = _crop_and_resize(one(image.T)[0], torch.tensor([0.5]), torch.tensor([0.0]),
                            torch.tensor([0.5]))[0, 0]
    assert torch.allclose(rows[:, 0], torch.tensor([2.0, 2.5, 3.0, 3.5, 4.0]), atol=1e-5)


def test_adjust_hue():
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    green = _adjust_hue(red, torch.tensor([1 / 3]).reshape(1, 1, 1))
    assert torch.allclose(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    colour = torch.tensor([0.8, 0.5, 0.2]).reshape(1, 3, 1, 1)  # hue 1/12 (orange)
    assert torch.allclose(_adjust_hue(colour, torch.zeros(1, 1, 1)), colour, atol=1e-6)
    # Shifting by 1/6 moves hue to 1/4: max and min kept, R and G swap roles.
    shifted = _adjust_hue(colour, torch.tensor([1 / 6]).reshape(1, 1, 1))
    assert torch.allclose(shifted.flatten(), torch.tensor([0.5, 0.8, 0.2]), atol=1e-5)
    grey = torch.full((1, 3, 2, 2), 0.4)
    assert torch.allclose(_adjust_hue(grey, torch.full((1, 1, 1), 0.2)), grey)


def test_natural_augs_shape_range_determinism_rgb():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 6, 3, 12, 12)).float() / 128 - 1
    cfg = AugmentationConfig(image_augmentations=True)
    a = augment_natural_images(x, cfg, torch.Generator().manual_seed(5))
    b = augment_natural_images(x, cfg, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1.0 and a.max() <= 255 / 128 - 1 + 1e-6
    assert not torch.allclose(a, x)


@pytest.mark.parametrize("individually", [False, True])
def test_natural_augs_in_chunks_equal_one_pass(monkeypatch, individually):
    # 3 x 13 = 39 images: two full chunks of 16 and a partial one
    x = torch.randint(0, 256, (3, 13, 3, 12, 12)).float() / 128 - 1
    cfg = AugmentationConfig(image_augmentations=True, augment_images_individually=individually)
    chunked = augment_natural_images(x, cfg, torch.Generator().manual_seed(2))
    monkeypatch.setattr(augment, "NATURAL_CHUNK", 1000)
    assert torch.equal(chunked, augment_natural_images(x, cfg, torch.Generator().manual_seed(2)))


def test_natural_augs_flip_and_crop_keep_row_order():
    ramp = torch.linspace(-1.0, 0.99, 10).expand(10, 10)  # increasing along W
    x = ramp.expand(4, 50, 1, 10, 10)
    out = augment_natural_images(x, AugmentationConfig(), torch.Generator().manual_seed(0))
    rows = out[..., 0, :, :].reshape(200, 10, 10)
    diffs = rows.diff(dim=-1)
    increasing = (diffs >= -1e-6).all(dim=(1, 2))
    decreasing = (diffs <= 1e-6).all(dim=(1, 2))
    assert (increasing ^ decreasing).all()  # each image is either flipped or not
    assert 60 < int(decreasing.sum()) < 140
    # Crops zoom in: a row spans at most the full range and, after a crop of side >= 0.6
    # and contrast >= 0.8 on the 0..1 scale, at least about half of it.
    span = rows[:, 0, :].amax(-1) - rows[:, 0, :].amin(-1)
    assert (span <= 1.9921875 + 1e-5).all() and (span > 0.4).all()


@pytest.mark.parametrize("individually", [False, True])
def test_natural_colour_jitter_per_episode_or_per_image(individually):
    x = torch.full((3, 5, 1, 4, 4), 0.0)  # flat images: flip, crop and contrast do nothing
    cfg = AugmentationConfig(image_augmentations=True, augment_images_individually=individually)
    out = augment_natural_images(x, cfg, torch.Generator().manual_seed(1))
    per_image = out[..., 0, 0, 0]
    assert torch.allclose(out, per_image[..., None, None, None].expand_as(out), atol=1e-6)
    # Additive brightness on the 0..1 scale: |delta| <= 0.3 -> |change| <= 0.3 * 255 / 128.
    assert (per_image.abs() <= 0.3 * 255 / 128 + 1e-5).all()
    within_episode_equal = torch.allclose(per_image, per_image[:, :1].expand(3, 5))
    assert within_episode_equal != individually
    assert not torch.allclose(per_image[0], per_image[1])
