"""Episode augmentation in torch, on batches of episodes (SPEC §2.4, SPEC §8 trap 7).

Two stages, as in the authors' TF code (``hypertransformer/tf/core/datasets.py``):

1. :class:`Augmenter` -- the "randomized augmentation" ops 1-7 of §2.4, applied to raw pixels
   0..255 *before* normalisation (trap 7: negation is ``255 - x``).  All random choices of an
   episode (or of each episode label, with ``per_label``) are drawn once by
   :meth:`Augmenter.draw` into an :class:`AugmentationState`; the sampler applies the same state
   to the support and the query images, and the evaluator keeps one state per task.
   :meth:`Augmenter.normalize` then resizes to ``image_size`` and maps to ``x / 128 - 1``.
2. :func:`augment_natural_images` -- flip / hue / brightness / contrast / random crop of the
   natural-image scripts, on normalised images, training only.
3. :func:`augment_drawings` (ours, not in the original) -- stroke width and a smooth warp
   (scale, shift, elastic) of ink drawings, drawn per image, on pixels 0..255 after ops 1-7,
   training only: what users' drawings vary in and Omniglot does not (docs/use.md).

Tensors are ``[T, M, C, H, W]``: T episodes of M images each.  Everything is vectorised over
T and M; per-image parameters are gathered from the ``[T, L]`` state tensors, where L is the
number of episode labels with ``per_label`` and 1 otherwise.  An op whose probability is 0 is
skipped entirely; an op that does not fire for an image leaves it bit-identical.

Details taken from the original:

- rot90: ``k = floor(4u)``, counter-clockwise like ``np.rot90`` / ``tf.image.rot90``; square
  images only.
- rotation: ``tfa.image.rotate`` semantics -- about the pixel centre ``((W-1)/2, (H-1)/2)``,
  counter-clockwise for positive angles, nearest neighbour, fill 0.  Implemented as an exact
  index mapping, so a rotation by exactly 90 degrees equals rot90 with k = 1.
- roll: ``tf.roll`` by ``trunc(r_h * H)`` rows and ``trunc(r_w * W)`` columns (``int`` cast
  truncates towards zero), ``r ~ U(-0.3, 0.3)`` each, positive = towards higher indices.
- resize: content side ``n = trunc(f * H)`` (likewise W), ``f ~ U(0.7, 1.0)``, bilinear with
  half-pixel centres and no antialiasing (``tf.image.resize``), placed at offset
  ``(H - n) // 2`` (``tf.image.resize_with_crop_or_pad``) on a zero canvas.
- contrast and smooth rescale each image and channel by ``255 (y - min) / (max - min + 1e-7)``.
- The original's ``boundary_probability`` flag drives no op, so it has no field here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from hypertransformer.config import Config

ALPHA_MIN, ALPHA_MAX = 0.5, 2.5  # contrast enhancement alpha range
MIN_RESIZE = 0.7  # resize factor range [0.7, 1.0)
ROLL_RANGE = 0.3  # roll fraction range (-0.3, 0.3)
MINMAX_EPS = 1e-7

# Natural-image augmentation (``augment_images`` of the original).
HUE_MAX_DELTA = 0.2
BRIGHTNESS_MAX_DELTA = 0.3
LOWER_CONTRAST, UPPER_CONTRAST = 0.8, 1.2
MIN_CROP_FRACTION = 0.6
NATURAL_CHUNK = 16  # images per pass: their intermediates stay in the cache

# Drawing augmentation: the elastic field is a random ELASTIC_GRID x ELASTIC_GRID grid of
# displacements interpolated bicubically over the image.
ELASTIC_GRID = 4
# The drawing augmentations' fields, the same names in Config and AugmentationConfig.
DRAWING_FIELDS = ("stroke_probability", "stroke_max_width", "warp_probability", "warp_scale",
                  "warp_shift", "warp_elastic")


@dataclass
class AugmentationConfig:
    """The §2.4 knobs of one phase (training or test)."""

    random_rotate_by_90: bool = False
    rotation_probability: float = 0.0
    angle_range: float = 180.0  # degrees
    roll_probability: float = 0.0
    resize_probability: float = 0.0
    contrast_probability: float = 0.0
    smooth_probability: float = 0.0
    negate_probability: float = 0.0
    per_label: bool = False
    image_augmentations: bool = False  # natural-image augmentations (training only)
    augment_images_individually: bool = False
    # drawing augmentations (training only): each image independently
    stroke_probability: float = 0.0  # widen the strokes ...
    stroke_max_width: float = 0.0  # ... by U(0, this) pixels
    warp_probability: float = 0.0  # warp the image: ...
    warp_scale: float = 0.0  # ... scale by a log-uniform factor in [1/(1 + s), 1 + s],
    warp_shift: float = 0.0  # ... shift by U(-f, f) of the side along each axis,
    warp_elastic: float = 0.0  # ... and displace smoothly by up to this many pixels

    def __post_init__(self) -> None:
        for name in ("stroke_max_width", "warp_scale", "warp_shift", "warp_elastic"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def drawings(self) -> bool:
        """Whether :func:`augment_drawings` can change an image."""
        return self.stroke_probability > 0 or self.warp_probability > 0

    @classmethod
    def from_config(cls, cfg: Config, train: bool) -> AugmentationConfig:
        """The training or the test configuration, as the original ``train.py`` builds them.

        Test time: each ``test_*`` float flag is used when >= 0, else the training value.
        ``test_random_rotate_by_90`` and ``test_per_label_augmentation`` are used as they are,
        with no fallback to the training flags (the Omniglot scripts train with per-label rot90
        and test without any augmentation).  Natural-image and drawing augmentations are off
        at test time.
        """
        if train:
            return cls(
                random_rotate_by_90=cfg.random_rotate_by_90,
                rotation_probability=cfg.rotation_probability,
                angle_range=cfg.angle_range,
                roll_probability=cfg.roll_probability,
                resize_probability=cfg.resize_probability,
                contrast_probability=cfg.contrast_probability,
                smooth_probability=cfg.smooth_probability,
                negate_probability=cfg.negate_probability,
                per_label=cfg.per_label_augmentation,
                image_augmentations=cfg.apply_image_augmentations,
                augment_images_individually=cfg.augment_images_individually,
                **{name: getattr(cfg, name) for name in DRAWING_FIELDS},
            )

        def pick(name: str) -> float:
            value = getattr(cfg, "test_" + name)
            return value if value >= 0 else getattr(cfg, name)

        return cls(
            random_rotate_by_90=cfg.test_random_rotate_by_90,
            rotation_probability=pick("rotation_probability"),
            angle_range=pick("angle_range"),
            roll_probability=pick("roll_probability"),
            resize_probability=pick("resize_probability"),
            contrast_probability=pick("contrast_probability"),
            smooth_probability=pick("smooth_probability"),
            negate_probability=pick("negate_probability"),
            per_label=cfg.test_per_label_augmentation,
        )

    @property
    def active(self) -> bool:
        """Whether any of the ops 1-7 can change an image."""
        return self.random_rotate_by_90 or any(p > 0 for p in (
            self.rotation_probability, self.roll_probability, self.resize_probability,
            self.contrast_probability, self.smooth_probability, self.negate_probability))


@dataclass
class AugmentationState:
    """Every random choice of ops 1-7 for T episodes: ``[T, L]`` tensors (CPU).

    L = num_labels with ``per_label`` (slot = the image's episode label), else 1.  Boolean fields
    say whether an op fires; the float fields are its parameters.  Tests may build one by hand.
    """

    rot90_k: Tensor  # long, counter-clockwise quarter turns 0..3 (all 0 when rot90 is off)
    rotate: Tensor  # bool
    angle: Tensor  # float, degrees, counter-clockwise, U(-angle_range, angle_range)
    roll: Tensor  # bool
    roll_h: Tensor  # float, fraction of H in (-0.3, 0.3)
    roll_w: Tensor  # float, fraction of W in (-0.3, 0.3)
    resize: Tensor  # bool
    resize_factor: Tensor  # float in [0.7, 1.0)
    contrast: Tensor  # bool
    alpha: Tensor  # float in [0.5, 2.5)
    smooth: Tensor  # bool
    negate: Tensor  # bool


class Augmenter:
    """Ops 1-7 of SPEC §2.4 on float pixels 0..255, then :meth:`normalize`."""

    def __init__(self, cfg: AugmentationConfig) -> None:
        self.cfg = cfg

    def draw(self, num_episodes: int, num_labels: int,
             generator: torch.Generator) -> AugmentationState:
        """One state per episode, or per episode label with ``per_label``."""
        cfg = self.cfg
        slots = num_labels if cfg.per_label else 1
        u = torch.rand(num_episodes, slots, 12, generator=generator,
                       device=generator.device).cpu().unbind(-1)
        k = (u[0] * 4).long().clamp_(max=3)
        return AugmentationState(
            rot90_k=k if cfg.random_rotate_by_90 else torch.zeros_like(k),
            rotate=u[1] < cfg.rotation_probability,
            angle=(2 * u[2] - 1) * cfg.angle_range,
            roll=u[3] < cfg.roll_probability,
            roll_h=(2 * u[4] - 1) * ROLL_RANGE,
            roll_w=(2 * u[5] - 1) * ROLL_RANGE,
            resize=u[6] < cfg.resize_probability,
            resize_factor=MIN_RESIZE + (1 - MIN_RESIZE) * u[7],
            contrast=u[8] < cfg.contrast_probability,
            alpha=ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * u[9],
            smooth=u[10] < cfg.smooth_probability,
            negate=u[11] < cfg.negate_probability,
        )

    def __call__(self, images: Tensor, labels: Tensor, state: AugmentationState) -> Tensor:
        """Augment float ``[T, M, C, H, W]`` images (0..255); ``labels`` long ``[T, M]``.

        ``labels`` is the episode class 0..num_labels-1 of each image (for an unlabelled
        support sample: the class it was drawn from); it only matters for per-label states.
        Returns new images of the same shape, still 0..255.
        """
        cfg = self.cfg
        t, m, c, h, w = images.shape
        x = images.reshape(t * m, c, h, w)
        slot = labels if state.rot90_k.shape[1] > 1 else torch.zeros_like(labels)
        slot = slot.to(state.rot90_k.device)

        def per_image(field: Tensor) -> Tensor:
            return field.gather(1, slot).reshape(-1).to(images.device)

        if cfg.random_rotate_by_90:
            if h != w:
                raise ValueError(f"random_rotate_by_90 needs square images, got {h}x{w}")
            x = _gather_pixels(x, _rot90_index(h, images.device)[per_image(state.rot90_k)])
        if cfg.rotation_probability > 0:
            x = _where(x, per_image(state.rotate), _rotate, per_image(state.angle))
        if cfg.roll_probability > 0:
            x = _where(x, per_image(state.roll), _roll,
                       per_image(state.roll_h), per_image(state.roll_w))
        if cfg.resize_probability > 0:
            x = _where(x, per_image(state.resize), _resize, per_image(state.resize_factor))
        if cfg.contrast_probability > 0:
            x = _where(x, per_image(state.contrast), _contrast, per_image(state.alpha))
        if cfg.smooth_probability > 0:
            x = _where(x, per_image(state.smooth), _smooth)
        if cfg.negate_probability > 0:
            x = _where(x, per_image(state.negate), _negate)
        return x.reshape(t, m, c, h, w)

    @staticmethod
    def normalize(images: Tensor, image_size: int) -> Tensor:
        """Resize ``[T, M, C, H, W]`` to ``image_size`` if needed (bilinear, half-pixel
        centres, no antialiasing), then map 0..255 to ``x / 128 - 1``."""
        t, m, c, h, w = images.shape
        if (h, w) != (image_size, image_size):
            images = F.interpolate(images.reshape(t * m, c, h, w), size=(image_size, image_size),
                                   mode="bilinear", align_corners=False)
            images = images.reshape(t, m, c, image_size, image_size)
        return (images / 128.0).sub_(1.0)  # in place: one buffer fewer


# ---- ops 1-7 on [n, C, H, W]; per-image parameters are [n] tensors ----------------------------

def _where(x: Tensor, fire: Tensor, op: Callable[..., Tensor], *params: Tensor) -> Tensor:
    """``op`` applied to the images where ``fire``; the others are copied unchanged."""
    sel = fire.nonzero().squeeze(1)
    if sel.numel() == 0:
        return x
    return x.index_copy(0, sel, op(x.index_select(0, sel), *(p[sel] for p in params)))


def _gather_pixels(x: Tensor, index: Tensor) -> Tensor:
    """``out[i, c].flat[p] = x[i, c].flat[index[i, p]]`` for index ``[n, H*W]``."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, index[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


@functools.lru_cache(maxsize=16)
def _rot90_index(size: int, device: torch.device) -> Tensor:
    """``[4, size*size]``: row k is the source pixel of each output pixel of ``rot90(., k)``."""
    grid = torch.arange(size * size, device=device).reshape(size, size)
    return torch.stack([torch.rot90(grid, k, dims=(0, 1)).reshape(-1) for k in range(4)])


def _rotate(x: Tensor, angle: Tensor) -> Tensor:
    n, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                            torch.arange(w, device=x.device, dtype=torch.float32), indexing="ij")
    ys, xs = ys.reshape(1, -1), xs.reshape(1, -1)  # every output pixel
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rad = torch.deg2rad(angle.float())[:, None]
    cos, sin = rad.cos(), rad.sin()
    src_x = torch.round(cos * (xs - cx) - sin * (ys - cy) + cx)
    src_y = torch.round(sin * (xs - cx) + cos * (ys - cy) + cy)
    inside = (src_x >= 0) & (src_x <= w - 1) & (src_y >= 0) & (src_y <= h - 1)
    index = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).long()
    out = _gather_pixels(x, index)
    return torch.where(inside.reshape(n, 1, h, w), out, 0.0)


def _roll(x: Tensor, frac_h: Tensor, frac_w: Tensor) -> Tensor:
    n, c, h, w = x.shape
    shift_h = (frac_h.float() * h).long()[:, None]  # .long() truncates towards zero
    shift_w = (frac_w.float() * w).long()[:, None]
    rows = torch.remainder(torch.arange(h, device=x.device) - shift_h, h)  # [n, H]
    cols = torch.remainder(torch.arange(w, device=x.device) - shift_w, w)  # [n, W]
    return _gather_pixels(x, (rows[:, :, None] * w + cols[:, None, :]).reshape(n, h * w))


def _resize(x: Tensor, factor: Tensor) -> Tensor:
    n, c, h, w = x.shape

    def axis(length: int) -> Tensor:
        size = (factor.float() * length).long().clamp(min=1)[:, None]  # [n, 1], truncated
        pos = torch.arange(length, device=x.device) - (length - size) // 2  # in the content
        src = (pos + 0.5) * length / size - 0.5  # half-pixel centres, length -> size
        return _bilinear_matrix(src, length) * ((pos >= 0) & (pos < size))[..., None]

    return _separable(x, axis(h), axis(w))


def _bilinear_matrix(src: Tensor, length: int) -> Tensor:
    """Bilinear weights ``[n, L_out, length]`` reading source coordinates ``src [n, L_out]``:
    the hat function ``max(0, 1 - |src - j|)`` over source pixels j."""
    j = torch.arange(length, device=src.device, dtype=torch.float32)
    return (1 - (src[..., None].float() - j).abs()).clamp(min=0)


def _separable(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ cols^T`` per image: rows ``[n, H_out, H]``, cols ``[n, W_out, W]``."""
    return rows[:, None].to(x.dtype) @ x @ cols[:, None].transpose(-1, -2).to(x.dtype)


def _minmax_255(y: Tensor) -> Tensor:
    lo = y.amin(dim=(2, 3), keepdim=True)
    hi = y.amax(dim=(2, 3), keepdim=True)
    return 255.0 * (y - lo) / (hi - lo + MINMAX_EPS)


def _contrast(x: Tensor, alpha: Tensor) -> Tensor:
    a = alpha.to(x.dtype).reshape(-1, 1, 1, 1)
    v = x / 128.0 - 1.0
    mean = v.mean(dim=(2, 3), keepdim=True)
    return _minmax_255(torch.tanh((v - mean) * a) / a + mean)


def _smooth(x: Tensor) -> Tensor:
    """3x3 box filter with zero padding (separable sums), then min-max to 0..255."""
    p = F.pad(x, (1, 1, 1, 1))
    rows = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
    box = (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) / 9.0
    return _minmax_255(box)


def _negate(x: Tensor) -> Tensor:
    return 255.0 - x


# ---- natural-image augmentations ----------------------------------------------------------------

def augment_natural_images(x: Tensor, cfg: AugmentationConfig,
                           generator: torch.Generator) -> Tensor:
    """The original ``augment_images`` on normalised ``[T, M, C, H, W]`` images.

    Values are mapped to 0..1 by ``u = (x + 1) 128 / 255`` (the original casts to uint8 and
    converts to float, pixel / 255) and back by ``x = 255 u / 128 - 1``; each colour op clips to
    [0, 1] as the saturating uint8 round trips do (we skip the 8-bit quantisation).  Then:
    per-image horizontal flip (p = 0.5); hue shift ``U(-0.2, 0.2)`` (3-channel images only;
    the original's hue op requires RGB), brightness ``+U(-0.3, 0.3)``, contrast
    ``(u - mean) U(0.8, 1.2) + mean`` per channel -- these three drawn once per episode, or per
    image with ``augment_images_individually``; finally a per-image square crop of side
    fraction ``U(0.6, 1.0)`` at a uniform position, resized back bilinearly
    (``tf.image.crop_and_resize`` sampling, corners aligned).
    """
    t, m, c, h, w = x.shape
    n = t * m
    dev = generator.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=dev).to(x.device)

    flip = rand(n) < 0.5
    colour = rand(t, m if cfg.augment_images_individually else 1, 3).expand(t, m, 3)
    colour = colour.reshape(n, 3, 1, 1)
    crop = rand(n, 3)
    x = x.reshape(n, c, h, w)
    # The ops are per image and memory-bound: in chunks whose intermediates stay in the cache
    # they run 3-4x faster, with the same result.
    out = torch.empty_like(x)
    for i in range(0, n, NATURAL_CHUNK):
        chunk = slice(i, i + NATURAL_CHUNK)
        out[chunk] = _augment_natural(x[chunk], flip[chunk], colour[chunk], crop[chunk])
    return out.reshape(t, m, c, h, w)


def _augment_natural(x: Tensor, flip: Tensor, colour: Tensor, crop: Tensor) -> Tensor:
    """:func:`augment_natural_images` on ``[n, C, H, W]`` with its random draws: ``flip``
    [n] (bool), ``colour`` [n, 3, 1, 1] (hue, brightness, contrast in 0..1), ``crop`` [n, 3]
    (side, top, left in 0..1)."""
    u = ((x + 1.0) * (128.0 / 255.0)).clamp(0.0, 1.0)
    u = torch.where(flip[:, None, None, None], u.flip(-1), u)
    if x.shape[1] == 3:
        u = _adjust_hue(u, (2 * colour[:, 0] - 1) * HUE_MAX_DELTA)
    u = (u + (2 * colour[:, 1:2] - 1) * BRIGHTNESS_MAX_DELTA).clamp(0.0, 1.0)
    factor = LOWER_CONTRAST + (UPPER_CONTRAST - LOWER_CONTRAST) * colour[:, 2:3]
    mean = u.mean(dim=(2, 3), keepdim=True)
    u = ((u - mean) * factor + mean).clamp(0.0, 1.0)
    v = u * (255.0 / 128.0) - 1.0

    side = MIN_CROP_FRACTION + (1 - MIN_CROP_FRACTION) * crop[:, 0]
    top, left = crop[:, 1] * (1 - side), crop[:, 2] * (1 - side)
    return _crop_and_resize(v, top, left, side)


def _adjust_hue(u: Tensor, delta: Tensor) -> Tensor:
    """Shift the HSV hue of RGB ``u`` in [0, 1] ``[n, 3, H, W]`` by ``delta`` ``[n, 1, 1]``
    (a fraction of the hue circle), keeping value and saturation (``tf.image.adjust_hue``)."""
    r, g, b = u.unbind(1)
    hi, lo = u.amax(dim=1), u.amin(dim=1)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    hue = torch.where(hi == r, (g - b) / safe,
                      torch.where(hi == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.remainder(hue / 6 + delta, 1.0)
    # HSV -> RGB: channel = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + 6 hue) mod 6,
    # n = 5, 3, 1 for R, G, B; V S = max - min.
    n = torch.tensor([5.0, 3.0, 1.0], device=u.device).reshape(1, 3, 1, 1)
    k = torch.remainder(n + 6 * hue[:, None], 6.0)
    return hi[:, None] - span[:, None] * torch.minimum(k, 4 - k).clamp(0.0, 1.0)


def _crop_and_resize(x: Tensor, top: Tensor, left: Tensor, side: Tensor) -> Tensor:
    """Crop the box ``[top, top + side] x [left, left + side]`` (fractions of the image, [n]
    each) and resize it bilinearly to the full ``H x W`` with ``tf.image.crop_and_resize``
    sampling: output column j reads source column ``(left + side j / (W - 1)) (W - 1)``, i.e.
    the box corners map onto the corner pixel centres (likewise for rows)."""
    n, c, h, w = x.shape

    def axis(start: Tensor, length: int) -> Tensor:
        pos = torch.arange(length, device=x.device)
        return _bilinear_matrix(start[:, None] * (length - 1) + side[:, None] * pos, length)

    return _separable(x, axis(top, h), axis(left, w))


# ---- drawing augmentations (ours) ---------------------------------------------------------------

def augment_drawings(x: Tensor, cfg: AugmentationConfig, generator: torch.Generator) -> Tensor:
    """Stroke width and warp of ink drawings ``[T, M, C, H, W]`` (0..255, light ink on a dark
    background), every image drawn independently; images an op does not pick stay unchanged.

    Strokes: with ``stroke_probability`` an image's strokes are widened by ``U(0,
    stroke_max_width)`` pixels (grayscale dilations, the last one in part).  Warp: with
    ``warp_probability`` the image is resampled (bilinear, background outside) through a
    scale by a log-uniform factor in ``[1 / (1 + warp_scale), 1 + warp_scale]`` about the
    centre, a shift of ``U(-warp_shift, warp_shift)`` of the side along each axis and a
    smooth displacement field of up to ``warp_elastic`` pixels.  The Omniglot scripts' rot90
    and the ops 1-7 come first (sampler).
    """
    t, m, c, h, w = x.shape
    n = t * m
    dev = generator.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=dev).to(x.device)

    u = rand(n, 6)
    field = rand(n, 2, ELASTIC_GRID, ELASTIC_GRID) * 2 - 1
    x = x.reshape(n, c, h, w)
    if cfg.stroke_probability > 0:
        x = _where(x, u[:, 0] < cfg.stroke_probability, _widen, u[:, 1] * cfg.stroke_max_width)
    if cfg.warp_probability > 0:
        scale = torch.exp((2 * u[:, 3] - 1) * math.log1p(cfg.warp_scale))
        shift = (2 * u[:, 4:6] - 1) * cfg.warp_shift
        x = _where(x, u[:, 2] < cfg.warp_probability, _warp, scale, shift,
                   field * cfg.warp_elastic)
    return x.reshape(t, m, c, h, w)


def _widen(x: Tensor, width: Tensor) -> Tensor:
    """Strokes of ``[n, C, H, W]`` widened by ``width`` [n] pixels, ``width / 2`` on each side:
    ``floor(width / 2)`` grayscale dilations by a 3x3 square, then a blend towards one more
    by the fraction left over (a width of 0 gives the image back)."""
    side = width.to(x.dtype) / 2
    whole = side.floor().long()
    part = (side - whole)[:, None, None, None]
    out = x
    for k in range(int(whole.max()) + 1 if len(whole) else 0):
        grown = F.max_pool2d(out, 3, stride=1, padding=1)
        last = (whole == k)[:, None, None, None]
        out = torch.where(last, out + part * (grown - out), grown)
    return out


def _warp(x: Tensor, scale: Tensor, shift: Tensor, displacement: Tensor) -> Tensor:
    """``[n, C, H, W]`` resampled: content scaled by ``scale`` [n] about the centre, moved by
    ``shift`` [n, 2] (fractions of the side, x then y, positive right and down), and each
    output pixel read from as far away as the bicubic interpolation of ``displacement``
    [n, 2, G, G] (pixels, x then y) says."""
    n, c, h, w = x.shape
    base, rows, cols = _warp_bases(h, w, displacement.shape[-1], x.device)
    pixels = torch.tensor([2 / w, 2 / h], device=x.device)
    smooth = rows @ displacement.float() @ cols.T  # [n, 2, H, W], pixels
    grid = (base - 2 * shift[:, None, None, :]) / scale[:, None, None, None]
    grid = grid + smooth.permute(0, 2, 3, 1) * pixels
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


@functools.lru_cache(maxsize=16)
def _warp_bases(h: int, w: int, g: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The identity sampling grid ``[1, H, W, 2]`` of ``grid_sample`` (align_corners=False)
    and the bicubic interpolation matrices ``[H, g]``, ``[W, g]`` of a g-point field
    (align_corners=True, as ``F.interpolate``)."""
    base = F.affine_grid(torch.eye(2, 3, device=device)[None], [1, 1, h, w],
                         align_corners=False)

    def cubic(length: int) -> Tensor:
        eye = torch.eye(g, device=device).reshape(g, 1, g, 1)
        return F.interpolate(eye, size=(length, 1), mode="bicubic",
                             align_corners=True).reshape(g, length).T

    return base, cubic(h), cubic(w)
