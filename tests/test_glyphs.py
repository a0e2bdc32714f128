"""The built-in glyphs dataset: class list, rendering, splits and cache."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from matplotlib import ft2font
from PIL import Image

from hypertransformer.data import glyphs
from hypertransformer.data.base import ClassDataset, DatasetError


@pytest.fixture(scope="module")
def glyph_cache(tmp_path_factory):
    """An empty cache directory for this module (HT_CACHE_DIR), so nothing pre-existing is
    read; the one full render of the module happens here."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HT_CACHE_DIR", str(tmp_path_factory.mktemp("ht_cache")))
    yield glyphs.load_glyphs()
    mp.undo()


@pytest.fixture(scope="module")
def data(glyph_cache) -> ClassDataset:
    return glyph_cache


def test_class_list_size_and_faces():
    classes = glyphs.glyph_classes()
    assert len(classes) == glyphs.NUM_CLASSES >= 1000
    assert all(len(faces) >= glyphs.MIN_FACES == 10 for _, faces in classes)
    assert all(len(set(faces)) == len(faces) for _, faces in classes)
    chars = [ch for ch, _ in classes]
    assert len(set(chars)) == len(chars)
    # Letters of several scripts and symbols.
    scripts = {unicodedata.name(ch).split()[0] for ch in chars}
    assert {"LATIN", "GREEK", "CYRILLIC", "ARMENIAN"} <= scripts
    cats = {unicodedata.category(ch) for ch in chars}
    assert {"Lu", "Ll", "Nd", "Sm", "So"} <= cats
    assert glyphs.glyph_classes() == classes  # deterministic, and a fresh list each call
    assert glyphs.glyph_classes() is not classes


def test_class_rules():
    faces = dict(glyphs.glyph_classes())
    # Homoglyphs: Latin kept, Greek and Cyrillic copies dropped.
    assert "A" in faces and "Α" not in faces and "А" not in faces
    assert "o" in faces and "ο" not in faces and "о" not in faces
    assert "Ж" in faces and "Ω" in faces and "∑" in faces and "7" in faces
    # Compatibility decompositions (superscripts, ligatures, fractions) are not classes.
    assert not {"²", "ﬁ", "½", "ª"} & set(faces)
    # Box drawing and punctuation are not classes.
    assert "─" not in faces and "!" not in faces and "." not in faces
    # Computer Modern fonts are TeX-encoded: cmsy10 maps 'A' to a calligraphic A (kept) but 'a'
    # to a turnstile (rejected); cmex10 (big delimiters) and Last Resort draw no class.
    assert "cmsy10" in faces["A"] and "cmr10" in faces["A"]
    assert "cmsy10" not in faces["a"] and "cmr10" in faces["a"]
    assert not any("cmex10" in f or "LastResortHE-Regular" in f for f in faces.values())


def test_class_count_mismatch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(glyphs, "NUM_CLASSES", glyphs.NUM_CLASSES + 1)
    with pytest.raises(DatasetError, match="NUM_CLASSES"):
        glyphs.glyph_classes()


def test_outline_mask_of_known_glyphs():
    font = ft2font.FT2Font(str(glyphs._face_paths()["DejaVuSans"]))
    i_mask, o_mask = glyphs._outline_masks(font, [ord("I"), ord("O")]).reshape(2, 24, 24)
    # DejaVu Sans 'I': one stem 201 units wide, cap height 1493 units, em 2048: on a 24-cell em
    # that is 2.4 × 17.5 cells, centred.
    cols = np.flatnonzero(i_mask.any(0))
    rows = np.flatnonzero(i_mask.any(1))
    assert len(cols) in (2, 3) and len(rows) in (17, 18)
    assert i_mask.sum() == len(cols) * len(rows)  # a filled rectangle
    assert abs(cols.mean() - 11.5) <= 0.5 and abs(rows.mean() - 11.5) <= 0.5
    # 'O' is a ring: ink on the centre row left and right, a hole in the middle (even-odd).
    assert not o_mask[12, 10:14].any()
    assert o_mask[12, 4:7].any() and o_mask[12, 17:20].any()


def test_near_duplicates_keep_the_lowest_code_point():
    a = np.zeros((24 * 24,), bool)
    a[:100] = True
    b = a.copy()
    b[100] = True  # distance 1/101 from a
    c = np.zeros_like(a)
    c[200:300] = True  # far from both
    # chars 0 ~ 1 (near), 2 far: 1 is a duplicate of 0.
    dup = glyphs._near_duplicates(3, [(np.array([0, 1, 2]), np.stack([a, b, c]))])
    assert dup.tolist() == [False, True, False]
    # The mean over the faces that draw both decides: near in one face, far in another.
    dup = glyphs._near_duplicates(2, [(np.array([0, 1]), np.stack([a, b])),
                                      (np.array([0, 1]), np.stack([a, c]))])
    assert dup.tolist() == [False, False]
    # A chain 0 ~ 1 ~ 2 with 0 !~ 2: 1 is dropped, so 2 (only near a dropped one) is kept.
    ab = a.copy()
    ab[100:106] = True  # 6/106 from a
    abc = ab.copy()
    abc[106:112] = True  # 6/112 from ab, 12/112 from a
    dup = glyphs._near_duplicates(3, [(np.array([0, 1, 2]), np.stack([a, ab, abc]))])
    assert dup.tolist() == [False, True, False]


def test_shapes_dtype_and_ink(data):
    assert data.name == "glyphs"
    assert data.num_classes == glyphs.NUM_CLASSES
    assert data.image_shape == (28, 28, 1)
    assert data.samples_per_class == [20] * glyphs.NUM_CLASSES
    assert data.class_names == [glyphs.class_name(ch) for ch, _ in glyphs.glyph_classes()]
    assert glyphs.class_name("A") == "U+0041 A"
    images = np.stack(data.classes)  # [K, 20, 28, 28, 1]
    assert images.dtype == np.uint8
    # Ink high on a zero background: every drawing reaches 255, has a zero background (at
    # least 30% exact zeros, also for filled shapes like ■) and an empty outer frame (room is
    # kept for the shift).
    assert (images.max(axis=(2, 3, 4)) == 255).all()
    assert ((images == 0).mean(axis=(2, 3, 4)) >= 0.3).all()
    assert images[:, :, 0].max() == images[:, :, -1].max() == 0
    assert images[:, :, :, 0].max() == images[:, :, :, -1].max() == 0


def test_samples_of_a_class_are_distinct(data):
    for k, c in enumerate(data.classes):
        assert len({s.tobytes() for s in c}) == 20, data.class_names[k]


def test_samples_cycle_through_the_faces(monkeypatch):
    used = []
    monkeypatch.setattr(glyphs, "_render_sample",
                        lambda ch, face, rng, size: used.append(face) or np.zeros((size, size)))
    ten = tuple(f"face{i}" for i in range(10))
    glyphs.render_class("A", ten, 28, seed=0)
    assert sorted(used) == sorted(ten * 2)  # every face twice
    assert used[:10] == used[10:]  # in one per-class order, repeated
    used.clear()
    many = tuple(f"face{i}" for i in range(23))
    glyphs.render_class("A", many, 28, seed=0)
    assert len(set(used)) == 20
    used.clear()
    glyphs.render_class("B", many, 28, seed=0)
    assert set(used) != set(many[:20])  # the order is random per class, not the first faces


def test_rendering_is_deterministic_and_seeded(data):
    classes = glyphs.glyph_classes()
    for k in (0, 500, glyphs.NUM_CLASSES - 1):
        ch, faces = classes[k]
        again = glyphs.render_class(ch, faces, 28, seed=0)
        np.testing.assert_array_equal(again, data.classes[k][..., 0])
        other = glyphs.render_class(ch, faces, 28, seed=1)
        assert other.shape == again.shape
        assert all((other[i] != again[i]).any() for i in range(20))
    # Another image size renders the same way.
    small = glyphs.render_class(*classes[0], image_size=14, seed=0)
    assert small.shape == (20, 14, 14) and small.dtype == np.uint8 and small.max() == 255


def test_splits_disjoint_covering_and_mixed():
    s = glyphs.GLYPHS_SPLITS
    k = glyphs.NUM_CLASSES
    assert list(s) == ["train", "val", "test"]
    assert s["train"][0] == 0 and s["test"][1] == k - 1
    assert s["val"][0] == s["train"][1] + 1 and s["test"][0] == s["val"][1] + 1
    sizes = {name: b - a + 1 for name, (a, b) in s.items()}
    assert sum(sizes.values()) == k
    assert abs(sizes["train"] / k - 0.7) < 0.01
    assert abs(sizes["val"] / k - 0.1) < 0.01
    assert abs(sizes["test"] / k - 0.2) < 0.01
    # The order is shuffled: every split holds Latin, Greek and Cyrillic letters and symbols.
    chars = [ch for ch, _ in glyphs.glyph_classes()]
    for a, b in s.values():
        part = chars[a:b + 1]
        scripts = {unicodedata.name(ch).split()[0] for ch in part}
        assert {"LATIN", "GREEK", "CYRILLIC"} <= scripts
        assert any(unicodedata.category(ch) == "Sm" for ch in part)


def test_cache_hit_reads_without_rendering_and_is_equal(glyph_cache, monkeypatch):
    data = glyph_cache

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(glyphs, "render_class", no_render)
    monkeypatch.setattr(glyphs, "_render_all", no_render)
    again = glyphs.load_glyphs()  # its speed: benchmarks/data_loading.py
    assert again.class_names == data.class_names
    for a, b in zip(again.classes, data.classes, strict=True):
        np.testing.assert_array_equal(a, b)
    npy, meta = glyphs._cache_paths(28, 0)
    assert npy.exists() and meta.exists()
    assert not list(npy.parent.glob("*.tmp"))


def test_three_channels_replicate(glyph_cache):
    data = glyph_cache
    rgb = glyphs.load_glyphs(channels=3)
    assert rgb.image_shape == (28, 28, 3)
    for k in (0, 1000):
        assert rgb.classes[k].dtype == np.uint8
        for ch in range(3):
            np.testing.assert_array_equal(rgb.classes[k][..., ch], data.classes[k][..., 0])


def test_damaged_cache_is_not_used(glyph_cache):
    npy, meta = glyphs._cache_paths(28, 0)
    original = npy.read_bytes()
    assert glyphs._read_cache(28, 0) is not None
    try:
        npy.write_bytes(original[: len(original) // 2])  # truncated
        assert glyphs._read_cache(28, 0) is None
    finally:
        npy.write_bytes(original)
    assert glyphs._read_cache(14, 0) is None  # another size: not cached yet


def test_bad_arguments_are_clear_errors():
    with pytest.raises(DatasetError, match="channels"):
        glyphs.load_glyphs(channels=2)
    with pytest.raises(DatasetError, match="image_size"):
        glyphs.load_glyphs(image_size=4)
    with pytest.raises(DatasetError, match="seed"):
        glyphs.load_glyphs(seed=-1)


def test_contact_sheet(glyph_cache, tmp_path):
    out = tmp_path / "sheet.png"
    assert glyphs.main(["--contact-sheet", str(out)]) == 0
    with Image.open(out) as im:
        w, h = im.size
    assert w > 300 and h > 500
