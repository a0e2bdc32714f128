"""Dataset loaders (SPEC §2.1): Omniglot (fake fixtures and the real zips), NumPy caches, image
folders, and their errors."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realdata import omniglot_dir

from hypertransformer.data import omniglot as omniglot_mod
from hypertransformer.data.base import DatasetError
from hypertransformer.data.image_folder import load_image_folder
from hypertransformer.data.numpy_cache import fit_images, load_numpy_cache, to_uint8
from hypertransformer.data.omniglot import load_omniglot

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Fixtures cache into tmp; only the real-data test uses the user's cache."""
    monkeypatch.setenv("HT_CACHE_DIR", str(tmp_path / "cache"))


# ---- a fake Omniglot in the official layout ----------------------------------------------
# Two background alphabets whose ids are NOT in name order (as in the real data), and one
# evaluation alphabet; 3 drawers per character.
FAKE = {
    "images_background": [("Zeta", 1, 2), ("Alpha", 3, 4)],  # (alphabet, first id, last id)
    "images_evaluation": [("Mu", 5, 6)],
}
DRAWERS = 3


def ink_rows(char_id: int, drawer: int) -> int:
    """The fake drawing of (id, drawer) has this many black rows at the top."""
    return 3 * char_id + drawer


def fake_png(char_id: int, drawer: int) -> bytes:
    img = np.ones((105, 105), bool)  # white background, like the real 1-bit PNGs
    img[:ink_rows(char_id, drawer)] = False
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def fake_members(part: str) -> list[tuple[str, bytes]]:
    out = []
    for alphabet, first, last in FAKE[part]:
        for cid in range(first, last + 1):
            for drawer in reversed(range(1, DRAWERS + 1)):  # stored out of drawer order
                out.append((f"{part}/{alphabet}/character{cid - first + 1:02d}/"
                            f"{cid:04d}_{drawer:02d}.png", fake_png(cid, drawer)))
    return out


def write_fake_omniglot(root: Path, as_zip: bool = True, drop: str | None = None,
                        replace: dict[str, bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for part in FAKE:
        members = [(n, replace.get(n, b) if replace else b) for n, b in fake_members(part)
                   if n != drop]
        if as_zip:
            with zipfile.ZipFile(root / f"{part}.zip", "w") as zf:
                for name, data in members:
                    zf.writestr(name, data)
        else:
            for name, data in members:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
    return root


def expected_fake(char_id: int, drawer: int) -> np.ndarray:
    img = np.zeros((105, 105, 1), np.uint8)
    img[:ink_rows(char_id, drawer)] = 255
    return img


@pytest.mark.parametrize("as_zip", [True, False])
def test_fake_omniglot_order_names_and_ink(tmp_path, as_zip):
    ds = load_omniglot(write_fake_omniglot(tmp_path / "omni", as_zip), image_size=105)
    assert ds.name == "omniglot"
    assert ds.class_names == ["Zeta/character01", "Zeta/character02", "Alpha/character01",
                              "Alpha/character02", "Mu/character01", "Mu/character02"]
    assert ds.samples_per_class == [DRAWERS] * 6 and ds.image_shape == (105, 105, 1)
    for c in range(6):  # class = id - 1, samples sorted by drawer, strokes 255 on 0
        for d in range(DRAWERS):
            np.testing.assert_array_equal(ds.classes[c][d], expected_fake(c + 1, d + 1))


def test_fake_omniglot_resized_and_rgb(tmp_path):
    root = write_fake_omniglot(tmp_path / "omni")
    ds = load_omniglot(root, image_size=21, channels=3)  # 105 = 5 * 21
    assert ds.image_shape == (21, 21, 3)
    img = ds.classes[0][0]  # id 1, drawer 1: the top 4 rows of 105 are ink
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    # Antialiased bilinear, scale 5: output row r averages input rows with the triangle
    # weights 1 - |centre - (5r + 2.5)| / 5 (renormalised at the border).  Row 0: ink rows
    # 0..3 weigh .6+.8+1+.8 = 3.2 of 4.4 -> 185.45; row 1: ink row 3 weighs .2 of 5 -> 10.2.
    assert (img[0] == 185).all() and (img[1] == 10).all() and img[2:].max() == 0


def test_zip_and_folder_agree_and_zip_wins(tmp_path):
    a = load_omniglot(write_fake_omniglot(tmp_path / "z", as_zip=True), image_size=28)
    b = load_omniglot(write_fake_omniglot(tmp_path / "f", as_zip=False), image_size=28)
    assert a.class_names == b.class_names
    for x, y in zip(a.classes, b.classes, strict=True):
        np.testing.assert_array_equal(x, y)
    both = write_fake_omniglot(write_fake_omniglot(tmp_path / "both", as_zip=False))
    assert omniglot_mod.Source(both, "images_background").is_zip


def test_cache_hit_skips_decoding_and_key_follows_the_files(tmp_path, monkeypatch):
    root = write_fake_omniglot(tmp_path / "omni")
    first = load_omniglot(root, image_size=28)
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and cached[0].endswith(".json") and cached[1].endswith(".npy")
    assert not any(n.endswith(".tmp") for n in cached)

    def no_decode(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(omniglot_mod, "_decode", no_decode)
    again = load_omniglot(root, image_size=28)
    assert again.class_names == first.class_names
    for x, y in zip(first.classes, again.classes, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(AssertionError):  # another size is another cache entry
        load_omniglot(root, image_size=14)
    zip_path = root / "images_evaluation.zip"
    st = zip_path.stat()
    os.utime(zip_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError):  # a changed source file invalidates the cache
        load_omniglot(root, image_size=28)


def test_omniglot_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("HT_OMNIGLOT_DIR", raising=False)
    with pytest.raises(DatasetError, match="HT_OMNIGLOT_DIR"):
        load_omniglot(None)
    with pytest.raises(DatasetError, match="does not exist"):
        load_omniglot(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="images_background.zip or the extracted folder"):
        load_omniglot(tmp_path / "empty")
    with pytest.raises(DatasetError, match="image_size"):
        load_omniglot(tmp_path / "empty", image_size=0)

    root = write_fake_omniglot(tmp_path / "trunc")
    zip_path = root / "images_background.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:300])
    with pytest.raises(DatasetError, match="not a readable zip"):
        load_omniglot(root)

    bad = "images_evaluation/Mu/character02/0006_02.png"
    root = write_fake_omniglot(tmp_path / "png", replace={bad: b"\x89PNG\r\n\x1a\nnot a png"})
    with pytest.raises(DatasetError, match="cannot read .*0006_02.png.*corrupt"):
        load_omniglot(root)

    root = write_fake_omniglot(tmp_path / "drawer", drop="images_background/Alpha/character01/"
                                                          "0003_02.png")
    with pytest.raises(DatasetError, match="Alpha/character01 has 2 drawings, expected 3 "
                                           r"\(missing drawer\(s\) 02\)"):
        load_omniglot(root)

    root = write_fake_omniglot(tmp_path / "gap", as_zip=False)
    shutil.rmtree(root / "images_background/Zeta/character02")
    with pytest.raises(DatasetError, match="0002 is missing"):
        load_omniglot(root)

    root = write_fake_omniglot(tmp_path / "crc")
    zip_path = root / "images_evaluation.zip"
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("images_evaluation/Mu/character01/0005_01.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 40] ^= 0xFF  # flip a byte of the stored PNG: CRC check fails
    zip_path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="0005_01.png"):
        load_omniglot(root)


def test_real_omniglot(monkeypatch):
    monkeypatch.delenv("HT_CACHE_DIR")  # the user's cache: the decode is paid once per machine
    root = omniglot_dir()
    first = load_omniglot(root)

    def no_decode(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(omniglot_mod, "_decode", no_decode)
    ds = load_omniglot(root)  # the second load reads the cache (its speed: benchmarks/)
    assert ds.class_names == first.class_names
    assert all(np.array_equal(a, b) for a, b in zip(ds.classes, first.classes, strict=True))
    assert ds.num_classes == 1623 and set(ds.samples_per_class) == {20}
    assert ds.image_shape == (28, 28, 1)
    assert ds.class_names[0] == "Arcadian/character01"  # id 0001
    assert ds.class_names[708] == "Alphabet_of_the_Magi/character01"  # id 0709
    assert ds.class_names[964] == "Angelic/character01"  # id 0965, first of evaluation
    assert ds.class_names[1622] == "ULOG/character26"  # id 1623
    everything = np.stack(ds.classes)
    assert everything.max() == 255 and everything.min() == 0
    assert everything.mean() < 40  # ink high: mostly background 0
    assert (everything[..., 0, :, :] == 0).mean() > 0.9  # the border row is background
    # Independent check of one drawing: PIL decode, invert, PIL bilinear shrink 105 -> 28.
    with zipfile.ZipFile(root / "images_evaluation.zip") as zf:
        raw = zf.read("images_evaluation/Angelic/character01/0965_07.png")
    with Image.open(io.BytesIO(raw)) as im:
        ink = Image.fromarray(255 - np.asarray(im.convert("L")))
    ref = np.asarray(ink.resize((28, 28), Image.BILINEAR)).astype(int)
    assert np.abs(ds.classes[964][6][..., 0].astype(int) - ref).max() <= 2


# ---- NumPy caches --------------------------------------------------------------------------
def test_dense_uint8_cache_gets_a_channel_axis(tmp_path):
    data = np.arange(3 * 2 * 4 * 4, dtype=np.uint8).reshape(3, 2, 4, 4)
    np.save(tmp_path / "toy.npy", data)
    ds = load_numpy_cache(tmp_path / "toy.npy", image_size=4)
    assert ds.name == "toy" and ds.class_names == ["0", "1", "2"]
    assert ds.image_shape == (4, 4, 1) and ds.samples_per_class == [2, 2, 2]
    np.testing.assert_array_equal(ds.classes[2][..., 0], data[2])


def test_bool_cache_is_0_and_255_without_overflow(tmp_path):
    data = np.zeros((2, 3, 4, 4), bool)
    data[0, :, :2] = True
    np.save(tmp_path / "b.npy", data)
    ds = load_numpy_cache(tmp_path / "b.npy", image_size=4)
    img = ds.classes[0][..., 0]
    assert ds.classes[0].dtype == np.uint8
    assert (img[:, :2] == 255).all() and (img[:, 2:] == 0).all()  # not 255 -> -1 -> 0/1
    assert ds.classes[1].max() == 0


def test_integer_and_float_pixel_rules():
    assert to_uint8(np.array([0, 200, 255], np.int16), "x").tolist() == [0, 200, 255]
    with pytest.raises(DatasetError, match="0..255, found -1..3"):
        to_uint8(np.array([-1, 3], np.int64), "x")
    with pytest.raises(DatasetError, match="found 0..256"):
        to_uint8(np.array([0, 256], np.int32), "x")
    # floats within [0, 1] are intensities: x255, rounded
    assert to_uint8(np.array([0.0, 0.5, 1.0, 0.1]), "x").tolist() == [0, 128, 255, 26]
    # floats beyond 1 are already 0..255 (the original pipeline's scale): rounded
    assert to_uint8(np.array([0.0, 1.0, 127.6, 255.0], np.float32), "x").tolist() == [0, 1, 128,
                                                                                        255]
    for bad in ([0.0, 256.0], [-0.5, 1.0], [0.0, np.nan]):
        with pytest.raises(DatasetError, match="float pixels"):
            to_uint8(np.array(bad), "x")


def test_dense_rgb_float_cache_resized_and_converted(tmp_path):
    data = np.zeros((2, 1, 8, 8, 3), np.float32)
    data[0, ..., 0] = 1.0  # pure red in [0, 1]
    data[1] = 0.5
    np.save(tmp_path / "rgb.npy", data)
    ds = load_numpy_cache(tmp_path / "rgb.npy", image_size=4, channels=1)
    assert ds.image_shape == (4, 4, 1)
    assert (ds.classes[0] == 76).all()  # luma 0.299 * 255 = 76.2
    assert (ds.classes[1] == 128).all()
    rgb = load_numpy_cache(tmp_path / "rgb.npy", image_size=8, channels=3)
    np.testing.assert_array_equal(rgb.classes[0][0, 0, 0], [255, 0, 0])


def test_fit_images_resize_and_channels():
    x = np.full((2, 10, 6, 1), 77, np.uint8)  # non-square, constant
    y = fit_images(x, 5, 3)
    assert y.shape == (2, 5, 5, 3) and (y == 77).all()
    half = np.zeros((1, 4, 4, 1), np.uint8)
    half[:, :, 2:] = 200  # left half 0, right half 200
    z = fit_images(half, 2, 1)[0, ..., 0]
    assert (z[:, 0] < 100).all() and (z[:, 1] > 100).all()
    np.testing.assert_array_equal(z[:, 0] + z[:, 1], [200, 200])  # symmetric weights


def test_chunked_object_folder_cache(tmp_path):
    folder = tmp_path / "chunks"
    folder.mkdir()
    rng = np.random.default_rng(0)
    first = [rng.integers(0, 256, (n, 6, 6), dtype=np.uint8) for n in (3, 5)]
    second = [rng.integers(0, 256, (4, 6, 6, 1), dtype=np.uint8)]
    for name, records in (("part_b.npy", second), ("part_a.npy", first)):  # written out of order
        arr = np.empty(len(records), object)
        arr[:] = records
        np.save(folder / name, arr, allow_pickle=True)
    (folder / "notes.txt").write_text("ignored")
    ds = load_numpy_cache(folder, image_size=6)
    assert ds.name == "chunks"
    assert ds.class_names == ["part_a.npy[0]", "part_a.npy[1]", "part_b.npy[0]"]
    assert ds.samples_per_class == [3, 5, 4]
    np.testing.assert_array_equal(ds.classes[1][..., 0], first[1])
    np.testing.assert_array_equal(ds.classes[2], second[0])


def test_numpy_cache_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_numpy_cache(tmp_path / "missing.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .npy files"):
        load_numpy_cache(tmp_path / "empty")
    np.save(tmp_path / "flat.npy", np.zeros((3, 4), np.uint8))
    with pytest.raises(DatasetError, match=r"\[classes, samples, H, W\(, C\)\]"):
        load_numpy_cache(tmp_path / "flat.npy")
    obj = np.empty(2, object)
    obj[:] = [np.zeros((1, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8)]
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    with pytest.raises(DatasetError, match="object array"):
        load_numpy_cache(tmp_path / "obj.npy")
    np.save(tmp_path / "big.npy", np.full((1, 1, 2, 2), 300, np.int16))
    with pytest.raises(DatasetError, match=r"big.npy\[0\]: integer pixels must be in 0..255"):
        load_numpy_cache(tmp_path / "big.npy")
    np.save(tmp_path / "full.npy", np.zeros((2, 3, 8, 8), np.uint8))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:200])
    with pytest.raises(DatasetError, match="cut.npy"):
        load_numpy_cache(tmp_path / "cut.npy")


# ---- image folders -------------------------------------------------------------------------
def test_image_folder_sizes_modes_and_order(tmp_path):
    root = tmp_path / "mine"
    (root / "b_cats").mkdir(parents=True)
    (root / "a_dogs").mkdir()
    (root / ".hidden").mkdir()
    Image.new("L", (40, 30), 200).save(root / "b_cats" / "1.png")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "b_cats" / "2.BMP")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(root / "a_dogs" / "x.jpg", quality=100)
    (root / "a_dogs" / "readme.txt").write_text("not an image")
    ds = load_image_folder(root, image_size=16)
    assert ds.name == "mine" and ds.class_names == ["a_dogs", "b_cats"]
    assert ds.samples_per_class == [1, 2] and ds.image_shape == (16, 16, 1)
    assert (ds.classes[1][0] == 200).all()  # gray kept, not inverted
    assert (ds.classes[1][1] == 76).all()  # red -> luma
    assert abs(int(ds.classes[0][0].mean()) - 18) <= 2  # jpeg of (10, 20, 30) -> luma ~18
    rgb = load_image_folder(root, image_size=16, channels=3)
    assert rgb.image_shape == (16, 16, 3)
    assert (rgb.classes[1][0] == 200).all()  # gray replicated
    np.testing.assert_array_equal(rgb.classes[1][1][3, 3], [255, 0, 0])


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "root").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_image_folder(tmp_path / "root")
    (tmp_path / "root" / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class holds no images"):
        load_image_folder(tmp_path / "root")
    Image.new("L", (4, 4)).save(tmp_path / "root" / "empty_class" / "ok.png")
    (tmp_path / "root" / "empty_class" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read image .*broken.png"):
        load_image_folder(tmp_path / "root")
