"""``glyphs``: the built-in offline dataset, letters drawn from the fonts matplotlib ships.

The offline stand-in for Omniglot (SPEC §2.1, last bullet; docs/data.md): no download, rendered
once and cached. A class is one Unicode character (Latin, Latin-extended, Greek, Cyrillic,
Armenian, Georgian, digits, math and other symbols) that at least ``MIN_FACES`` of matplotlib's
bundled font faces (DejaVu, STIX, Computer Modern under ``matplotlib.get_data_path()/fonts/ttf``)
can draw. Each class has ``SAMPLES_PER_CLASS`` drawings: sample ``i`` uses face ``i mod m`` of
the class's ``m`` faces in a per-class random order, drawn at ``_SUPERSAMPLE`` × the image size
with a random stroke thickening, then a random affine map about the ink centre (rotation, scale,
shear, shift), centred on its ink at a fixed em scale (shrunk only if it would not fit) and
box-filtered to the image size; ink high (255 on 0; faint hairline drawings are stretched to
peak at 255).

Which characters become classes (deterministic given matplotlib's font files, independent of
the rasteriser):

- Unicode categories Lu, Ll, Lt, Lo, Nd, Sm, So, Sc; no compatibility decompositions
  (superscripts, ligatures, fractions, math-alphabet letters are restyled copies of other
  characters); no box-drawing or block elements (U+2500–259F: lines and filled rectangles).
- A face draws a character when its cmap maps it and the glyph outline covers at least one
  cell of a ``_GRID``² raster of the em square. The Computer Modern (``cm*``) fonts use TeX
  encodings in their cmap, so there a code counts only when the glyph's name spells the same
  character (Adobe Glyph List). The Last Resort font (a placeholder for every code point) is
  not used.
- Near-duplicates: two characters are near-duplicates when their outline rasters differ by
  less than ``_DUPLICATE_DISTANCE`` (Jaccard distance, mean over the faces that draw both);
  of a group, the lowest code point is kept (Latin ``A`` over Greek ``Α`` and Cyrillic ``А``).

Classes are ordered by code point, then shuffled once with a fixed seed so that the contiguous
``GLYPHS_SPLITS`` mix scripts.

Regenerate the contact sheet of the docs::

    python -m hypertransformer.data.glyphs --contact-sheet docs/glyphs.png
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from fontTools import agl
from matplotlib import ft2font
from matplotlib.figure import Figure
from matplotlib.path import Path as MplPath
from PIL import Image, ImageDraw, ImageFont

from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.cache import atomic_write, cache_dir

# Bump when anything that changes the rendered arrays changes (invalidates the cache).
GLYPHS_VERSION = 1
# The number of classes matplotlib's bundled fonts give under the rules above.
NUM_CLASSES = 1641
SAMPLES_PER_CLASS = 20
MIN_FACES = 10

_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd", "Sm", "So", "Sc"})
_EXCLUDED_RANGES = ((0x2500, 0x259F),)  # box drawing, block elements
_EXCLUDED_FACES = frozenset({"LastResortHE-Regular"})
_GRID = 24  # raster of the em square for the blank and near-duplicate tests
_DUPLICATE_DISTANCE = 0.1
_ORDER_SEED = 2022  # the one shuffle of the class order before splitting
# Glyph outlines in font units, unhinted (matplotlib < 3.10 has module constants).
_OUTLINE_FLAGS = (ft2font.LoadFlags.NO_SCALE | ft2font.LoadFlags.NO_HINTING
                  if hasattr(ft2font, "LoadFlags")
                  else ft2font.LOAD_NO_SCALE | ft2font.LOAD_NO_HINTING)

# Rendering: at _SUPERSAMPLE × the image size, the em square _EM_FRACTION of the image side; a
# square centred on the ink becomes the image, so letters keep their relative sizes (``o`` is
# smaller than ``O``).
_SUPERSAMPLE = 2
_EM_FRACTION = 0.83
_STROKES = (0, 1)  # extra stroke width in px at the render size (bold faces vary weight more)
_MAX_ROTATION = 10.0  # degrees
_SCALE_RANGE = (0.8, 1.1)
_MAX_SHEAR = 0.15
_MAX_SHIFT = 2.0  # output pixels


def _split_ranges(k: int) -> dict[str, tuple[int, int]]:
    a = round(0.7 * k) - 1
    b = a + round(0.1 * k)
    return {"train": (0, a), "val": (a + 1, b), "test": (b + 1, k - 1)}


GLYPHS_SPLITS: dict[str, tuple[int, int]] = _split_ranges(NUM_CLASSES)


def _font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _face_paths() -> dict[str, Path]:
    paths = sorted(_font_dir().glob("*.ttf"))
    return {p.stem: p for p in paths if p.stem not in _EXCLUDED_FACES}


def _is_candidate(code: int) -> bool:
    ch = chr(code)
    return (unicodedata.category(ch) in _CATEGORIES
            and not unicodedata.decomposition(ch).startswith("<")
            and not any(lo <= code <= hi for lo, hi in _EXCLUDED_RANGES))


def _outline_masks(font: ft2font.FT2Font, codes: Sequence[int]) -> np.ndarray:
    """Each glyph's outline (control polygon, even-odd rule) rasterised on its em square,
    centred on the glyph's bounding box: bool [len(codes), _GRID * _GRID].

    Pure geometry on the font's outlines (no rasteriser), all glyphs of a face at once.
    """
    vertices, glyph, starts = [], [], []
    for i, code in enumerate(codes):
        font.load_char(code, _OUTLINE_FLAGS)
        v, c = font.get_path()
        v = v[c != MplPath.CLOSEPOLY]
        vertices.append(v)
        glyph.append(np.full(len(v), i))
        starts.append(c[c != MplPath.CLOSEPOLY] == MplPath.MOVETO)
    n, g = len(codes), _GRID
    v, glyph, is_start = (np.concatenate(a) for a in (vertices, glyph, starts))
    lo, hi = np.full((n, 2), np.inf), np.full((n, 2), -np.inf)
    np.minimum.at(lo, glyph, v)
    np.maximum.at(hi, glyph, v)
    em = font.units_per_EM / 64  # get_path gives 26.6 fixed point
    p = (v - (lo[glyph] + hi[glyph]) / 2) * (g / em) + g / 2
    starts = np.flatnonzero(is_start)  # every contour begins with a MOVETO
    nxt = np.arange(1, len(p) + 1)
    nxt[np.r_[starts[1:], len(p)] - 1] = starts  # close every contour
    x0, y0, x1, y1 = p[:, 0], p[:, 1], p[nxt, 0], p[nxt, 1]
    centres = np.arange(g) + 0.5
    edges, rows = np.nonzero((y0[:, None] > centres) != (y1[:, None] > centres))
    # An edge crossing row r at x toggles the pixels of row r whose centre lies left of x.
    xc = x0[edges] + (centres[rows] - y0[edges]) * (x1 - x0)[edges] / (y1 - y0)[edges]
    n_left = np.clip(np.ceil(xc - 0.5), 0, g).astype(int)
    row = (glyph[edges] * g + rows) * (g + 1)
    size = n * g * (g + 1)
    toggles = np.bincount(row, minlength=size) - np.bincount(row + n_left, minlength=size)
    crossings = np.cumsum(toggles.reshape(n, g, g + 1)[:, :, :g], axis=2)
    return (crossings % 2 == 1).reshape(n, g * g)


def _near_duplicates(n: int, faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """bool [n]: character i is a near-duplicate of a lower one (mean Jaccard distance of the
    outline rasters over the faces that draw both < ``_DUPLICATE_DISTANCE``).

    ``faces``: per face, (character indices, their rasters). A mean below the threshold needs a
    face below it, so only those pairs are averaged.
    """
    t = _DUPLICATE_DISTANCE
    pairs = set()
    for idx, m in faces:
        m = m.astype(np.float32)
        inter = m @ m.T
        area = m.sum(1)
        close = inter * (2 - t) > (1 - t) * (area[:, None] + area[None, :])  # 1 - I/U < t
        a, b = np.nonzero(np.triu(close, 1))
        pairs.update(zip(idx[a].tolist(), idx[b].tolist(), strict=True))
    if not pairs:
        return np.zeros(n, bool)
    a, b = np.array(sorted(pairs)).T
    dist, common = np.zeros(len(a)), np.zeros(len(a))
    for idx, m in faces:
        row = np.full(n, -1)
        row[idx] = np.arange(len(idx))
        both = (row[a] >= 0) & (row[b] >= 0)
        ma, mb = m[row[a[both]]], m[row[b[both]]]
        dist[both] += 1 - (ma & mb).sum(1) / (ma | mb).sum(1)
        common[both] += 1
    close = dist / common < t
    duplicate = np.zeros(n, bool)
    for i, j in zip(a[close], b[close], strict=True):
        duplicate[j] |= not duplicate[i]  # i is kept (lowest first): drop j
    return duplicate


@functools.lru_cache(maxsize=1)
def _discover_classes() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The classes by code point: ``(character, names of the faces that draw it)``."""
    paths = _face_paths()
    fonts = {name: ft2font.FT2Font(str(path)) for name, path in paths.items()}
    # Per face: the codes it maps (TeX-encoded faces only where the glyph name agrees).
    cmaps: dict[str, list[int]] = {}
    for name, font in fonts.items():
        cmap = font.get_charmap()
        codes = [c for c in sorted(cmap) if _is_candidate(c)]
        if name.startswith("cm"):
            codes = [c for c in codes if agl.toUnicode(font.get_glyph_name(cmap[c])) == chr(c)]
        cmaps[name] = codes
    counts: dict[int, int] = {}
    for codes in cmaps.values():
        for c in codes:
            counts[c] = counts.get(c, 0) + 1
    chars = sorted(c for c, n in counts.items() if n >= MIN_FACES)
    index = {c: i for i, c in enumerate(chars)}
    # Outline rasters; a face draws a character when its raster is not empty.
    masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, font in fonts.items():
        codes = [c for c in cmaps[name] if c in index]
        m = _outline_masks(font, codes) if codes else np.zeros((0, _GRID * _GRID), bool)
        drawn = m.any(1)
        masks[name] = (np.array([index[c] for c in codes], int)[drawn], m[drawn])
    faces: list[list[str]] = [[] for _ in chars]
    for name, (idx, _) in masks.items():
        for i in idx:
            faces[i].append(name)
    eligible = np.array([len(f) >= MIN_FACES for f in faces])
    duplicate = _near_duplicates(
        len(chars), [(idx[eligible[idx]], m[eligible[idx]]) for idx, m in masks.values()])
    return tuple((chr(c), tuple(f)) for c, f, ok in zip(chars, faces, eligible & ~duplicate,
                                                        strict=True) if ok)


def glyph_classes() -> list[tuple[str, tuple[str, ...]]]:
    """The classes in dataset order: ``(character, names of the faces that draw it)``.

    Raises ``DatasetError`` when matplotlib's fonts do not give ``NUM_CLASSES`` classes.
    """
    classes = list(_discover_classes())
    if len(classes) != NUM_CLASSES:
        raise DatasetError(
            f"matplotlib {matplotlib.__version__}'s fonts in {_font_dir()} give "
            f"{len(classes)} glyph classes, but this version of hypertransformer expects "
            f"{NUM_CLASSES} (its glyphs splits are defined for that list); use the matplotlib "
            f"version the project was built with, or update NUM_CLASSES in {__name__}")
    random.Random(_ORDER_SEED).shuffle(classes)
    return classes


def class_name(ch: str) -> str:
    """``"U+0041 A"``."""
    return f"U+{ord(ch):04X} {ch}"


@functools.lru_cache(maxsize=64)
def _font(face: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_face_paths()[face]), size, layout_engine=ImageFont.Layout.BASIC)


def _render_sample(ch: str, face: str, rng: np.random.Generator, image_size: int) -> np.ndarray:
    """One distorted drawing of ``ch`` in ``face``: uint8 [image_size, image_size]."""
    stroke = _STROKES[rng.integers(len(_STROKES))]
    angle = math.radians(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    scale = rng.uniform(*_SCALE_RANGE)
    shear = rng.uniform(-_MAX_SHEAR, _MAX_SHEAR)
    window = _SUPERSAMPLE * image_size
    shift_x, shift_y = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=2) * _SUPERSAMPLE

    font = _font(face, round(_EM_FRACTION * window))
    left, top, right, bottom = font.getbbox(ch, stroke_width=stroke)
    pad = 2
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), ch, fill=255, font=font,
                                stroke_width=stroke, stroke_fill=255)
    box = canvas.getbbox()
    if box is None:
        raise DatasetError(f"glyph {class_name(ch)} renders blank in face {face}")
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    # Forward map about the ink centre: scale · rotation · shear [[1, shear], [0, 1]].
    cos, sin = math.cos(angle), math.sin(angle)
    a, b, c, d = cos, cos * shear - sin, sin, sin * shear + cos
    half_w, half_h = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    extent = 2 * scale * max(abs(a) * half_w + abs(b) * half_h, abs(c) * half_w + abs(d) * half_h)
    room = window - 2 * (_MAX_SHIFT + 1) * _SUPERSAMPLE
    k = scale * min(1.0, room / extent)  # shrink only what would not fit
    # PIL wants the inverse: window pixel (x, y) → canvas pixel.
    det = k * (a * d - b * c)  # (k·A)⁻¹ = adj(A) / (k·det A)
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    x0, y0 = window / 2 + shift_x, window / 2 + shift_y
    data = (ia, ib, cx - ia * x0 - ib * y0, ic, id_, cy - ic * x0 - id_ * y0)
    big = canvas.transform((window, window), Image.Transform.AFFINE, data,
                           resample=Image.Resampling.BILINEAR)
    out = np.asarray(big.resize((image_size, image_size), Image.Resampling.BOX), np.uint8)
    peak = int(out.max())  # hairline glyphs come out grey: stretch their ink to 255
    return out if peak in (0, 255) else (out.astype(np.uint16) * 255 // peak).astype(np.uint8)


def render_class(ch: str, faces: Sequence[str], image_size: int, seed: int) -> np.ndarray:
    """The ``SAMPLES_PER_CLASS`` drawings of ``ch``: uint8 [n, image_size, image_size].

    The random state depends only on (seed, code point): independent of the class order.
    """
    rng = np.random.default_rng([seed, ord(ch)])
    order = rng.permutation(len(faces))
    return np.stack([_render_sample(ch, faces[order[i % len(faces)]], rng, image_size)
                     for i in range(SAMPLES_PER_CLASS)])


def _cache_paths(image_size: int, seed: int) -> tuple[Path, Path]:
    stem = cache_dir() / f"glyphs_v{GLYPHS_VERSION}_{image_size}px_seed{seed}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _read_cache(image_size: int, seed: int) -> tuple[np.ndarray, list[str]] | None:
    npy, meta = _cache_paths(image_size, seed)
    if not (npy.exists() and meta.exists()):
        return None
    try:
        names = json.loads(meta.read_text(encoding="utf-8"))["class_names"]
        images = np.load(npy)
    except Exception:  # damaged bytes raise many types (e.g. TokenError from the header)
        return None  # damaged: render again
    expected = (NUM_CLASSES, SAMPLES_PER_CLASS, image_size, image_size)
    if (not isinstance(images, np.ndarray) or images.shape != expected
            or images.dtype != np.uint8 or not isinstance(names, list)
            or len(names) != NUM_CLASSES or not all(isinstance(n, str) for n in names)):
        return None
    return images, names


def _render_all(image_size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    classes = glyph_classes()
    images = np.stack([render_class(ch, faces, image_size, seed) for ch, faces in classes])
    names = [class_name(ch) for ch, _ in classes]
    npy, meta = _cache_paths(image_size, seed)
    text = json.dumps({"version": GLYPHS_VERSION, "image_size": image_size, "seed": seed,
                       "class_names": names}, ensure_ascii=False)
    atomic_write(meta, lambda f: f.write(text.encode("utf-8")))
    atomic_write(npy, lambda f: np.save(f, images))
    return images, names


def load_glyphs(image_size: int = 28, channels: int = 1, seed: int = 0) -> ClassDataset:
    """The glyphs dataset: ``NUM_CLASSES`` classes of uint8 [20, image_size, image_size,
    channels], ink 255 on 0, class names like ``"U+0041 A"``.

    Rendered on first use (10-20 s) and cached under ``cache_dir()``.
    """
    if channels not in (1, 3):
        raise DatasetError(f"glyphs has 1 or 3 channels; asked for channels={channels}")
    if not 8 <= image_size <= 512:
        raise DatasetError(f"glyphs image_size must be in 8..512; asked for {image_size}")
    if seed < 0:
        raise DatasetError(f"glyphs seed must be >= 0; asked for {seed}")
    cached = _read_cache(image_size, seed)
    images, names = cached if cached is not None else _render_all(image_size, seed)
    images = images[..., None]
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    return ClassDataset("glyphs", list(images), names)


def write_contact_sheet(path: str | Path, rows: int = 16, samples: int = 10,
                        image_size: int = 28, seed: int = 0) -> None:
    """A PNG grid: ``rows`` classes spread over the class order × their first ``samples``."""
    data = load_glyphs(image_size=image_size, seed=seed)
    picks = np.linspace(0, data.num_classes - 1, rows).round().astype(int)
    gap = 2
    cell = image_size + gap
    sheet = np.full((rows * cell + gap, samples * cell + gap), 64, np.uint8)
    for r, k in enumerate(picks):
        for s in range(samples):
            y, x = gap + r * cell, gap + s * cell
            sheet[y:y + image_size, x:x + image_size] = data.classes[k][s, :, :, 0]
    fig = Figure(figsize=(samples * 0.5 + 1.6, rows * 0.5))  # Agg canvas, no pyplot state
    ax = fig.subplots()
    ax.imshow(sheet, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks(gap + np.arange(rows) * cell + image_size / 2)
    ax.set_yticklabels([f"{data.class_names[k]}  #{k}" for k in picks],
                       fontfamily=["DejaVu Sans", "STIXGeneral"], fontsize=9)
    ax.set_xticks([])
    ax.set_title(f"glyphs: {rows} of {data.num_classes} classes × {samples} of "
                 f"{SAMPLES_PER_CLASS} samples", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypertransformer.data.glyphs",
                                     description="Render (and cache) the glyphs dataset.")
    parser.add_argument("--contact-sheet", metavar="PNG", help="write a contact sheet here")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.contact_sheet:
        write_contact_sheet(args.contact_sheet, image_size=args.image_size, seed=args.seed)
        print(f"wrote {args.contact_sheet}")
    else:
        data = load_glyphs(image_size=args.image_size, seed=args.seed)
        print(f"glyphs: {data.num_classes} classes × {SAMPLES_PER_CLASS}, {data.image_shape}, "
              f"splits {GLYPHS_SPLITS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
