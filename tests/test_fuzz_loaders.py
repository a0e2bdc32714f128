"""Fuzz tests of every loader (SPEC §2.1): a damaged, mistyped or misplaced file raises
``DatasetError`` naming that file, never another exception type.

Covered: Omniglot (zips and extracted folders), dense and folder NumPy caches, image folders,
the registry's ``data_numpy_dir``, miniImageNet (pickles, CSV + JPEGs) and tieredImageNet (npz,
PNG pickles, labels pickles), and the derived caches of Omniglot, glyphs and the ImageNet
variants (damage there is not an error: the cache is rebuilt).  Fixtures are tiny, written in
``tmp_path`` in the exact on-disk formats; all randomness comes from NumPy generators with fixed
seeds.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from imagenet_fixtures import write_mini_csv, write_mini_pickles, write_tiered
from PIL import Image
from test_datasets import fake_png, write_fake_omniglot

from hypertransformer.data import glyphs, imagenet
from hypertransformer.data import omniglot as omniglot_mod
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.image_folder import load_image_folder
from hypertransformer.data.imagenet import load_imagenet
from hypertransformer.data.numpy_cache import load_numpy_cache
from hypertransformer.data.omniglot import load_omniglot
from hypertransformer.data.registry import clear_memo, load_dataset

SEED = 9  # every case draws from default_rng([SEED, crc32(case name)])
MEMBER = "images_evaluation/Mu/character02/0006_02.png"  # the damaged drawing of a fake
CORRUPTION_SEEDS = range(8)  # random byte flips per format


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Derived caches go to tmp (``HT_CACHE_DIR``); no memo survives a test."""
    monkeypatch.setenv("HT_CACHE_DIR", str(tmp_path / "cache"))
    clear_memo()


def rng_for(case: str) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(case.encode())])


def expect_error(load: Callable[[], object], name: str) -> str:
    """``load()`` raises DatasetError (any other type fails the test) naming ``name``."""
    with pytest.raises(DatasetError) as info:
        load()
    message = str(info.value)
    assert name in message, f"{name!r} is not named in: {message}"
    return message


def loads_or_names(load: Callable[[], object], name: str) -> None:
    """For random damage that may be harmless: a dataset, or a DatasetError naming ``name``."""
    try:
        result = load()
    except DatasetError as e:
        assert name in str(e), f"{name!r} is not named in: {e}"
    else:
        assert isinstance(result, ClassDataset)


def flip_bytes(data: bytes, rng: np.random.Generator, count: int, end: int | None = None) -> bytes:
    """``data`` with ``count`` random bytes (among the first ``end``) set to random values."""
    out = bytearray(data)
    for pos in rng.integers(0, end or len(out), count):
        out[pos] = int(rng.integers(0, 256))
    return bytes(out)


def png(width: int, height: int, value: int = 255) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb if large)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I",
                                                                         zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def cut(data: bytes, rng: np.random.Generator, low: int, high: int) -> bytes:
    """``data`` truncated at a random length in [low, high)."""
    return data[:int(rng.integers(low, high))]


# ---- Omniglot -------------------------------------------------------------------------------
# Damaged drawings: bytes of one PNG (zip member or file) -> the message names that PNG.
PNG_DAMAGE: dict[str, Callable[[np.random.Generator], bytes]] = {
    "random bytes": lambda rng: rng.bytes(300),
    "truncated": lambda rng: cut(fake_png(6, 2), rng, 8, len(fake_png(6, 2)) // 2),
    "empty file": lambda rng: b"",
    "text file": lambda rng: b"not an image\n",
    "decompression bomb": lambda rng: png_header_only(30000, 30000),
}


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
@pytest.mark.parametrize("damage", [*PNG_DAMAGE, "wrong size"])
def test_omniglot_damaged_drawing(tmp_path, as_zip, damage):
    data = png(50, 50) if damage == "wrong size" else PNG_DAMAGE[damage](rng_for(damage))
    root = write_fake_omniglot(tmp_path / "omni", as_zip, replace={MEMBER: data})
    expect_error(lambda: load_omniglot(root), "0006_02.png")


ZIP_DAMAGE: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "random bytes": lambda data, rng: rng.bytes(len(data)),
    "truncated": lambda data, rng: cut(data, rng, 1, len(data)),
    "empty file": lambda data, rng: b"",
}


@pytest.mark.parametrize("damage", ZIP_DAMAGE)
def test_omniglot_damaged_zip(tmp_path, damage):
    root = write_fake_omniglot(tmp_path / "omni")
    zip_path = root / "images_background.zip"
    zip_path.write_bytes(ZIP_DAMAGE[damage](zip_path.read_bytes(), rng_for(damage)))
    expect_error(lambda: load_omniglot(root), "images_background.zip")


def patch_central_directory(zip_path: Path, member: str, offset: int, value: int) -> None:
    """Sets the 2-byte field at ``offset`` of ``member``'s central-directory record
    (8: general-purpose flags, 10: compression method)."""
    data = bytearray(zip_path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start >= 0:
        length = int.from_bytes(data[start + 28:start + 30], "little")
        if data[start + 46:start + 46 + length] == member.encode():
            data[start + offset:start + offset + 2] = value.to_bytes(2, "little")
            zip_path.write_bytes(bytes(data))
            return
        start = data.find(b"PK\x01\x02", start + 1)
    raise AssertionError(f"{member} is not in {zip_path}")


@pytest.mark.parametrize("offset,value", [(10, 99), (8, 1)],
                         ids=["unknown compression method", "flagged encrypted"])
def test_omniglot_zip_member_that_zipfile_cannot_open(tmp_path, offset, value):
    root = write_fake_omniglot(tmp_path / "omni")
    patch_central_directory(root / "images_evaluation.zip", MEMBER, offset, value)
    expect_error(lambda: load_omniglot(root), "0006_02.png")


def test_omniglot_paths_that_are_files(tmp_path):
    not_a_dir = tmp_path / "omniglot.zip"
    not_a_dir.write_bytes(b"PK")
    message = expect_error(lambda: load_omniglot(not_a_dir), "omniglot.zip")
    assert "is a file, not a folder" in message
    root = write_fake_omniglot(tmp_path / "extracted", as_zip=False)
    part = root / "images_background"
    for png_file in sorted(part.rglob("*.png"), reverse=True):
        png_file.unlink()
    for folder in sorted(part.rglob("*"), reverse=True):
        folder.rmdir()
    part.rmdir()
    part.write_bytes(b"")  # a file where the extracted folder belongs
    message = expect_error(lambda: load_omniglot(root), "images_background")
    assert "is a file" in message


def test_omniglot_empty_character_folder(tmp_path):
    root = write_fake_omniglot(tmp_path / "omni", as_zip=False)
    for drawing in (root / "images_background/Zeta/character02").iterdir():
        drawing.unlink()
    message = expect_error(lambda: load_omniglot(root), "images_background")
    assert "0002 is missing" in message


@pytest.mark.parametrize("seed", CORRUPTION_SEEDS)
def test_omniglot_random_corruption_of_a_zip(tmp_path, seed):
    root = write_fake_omniglot(tmp_path / "omni")
    zip_path = root / "images_evaluation.zip"
    rng = np.random.default_rng([SEED, seed])
    zip_path.write_bytes(flip_bytes(zip_path.read_bytes(), rng, 3))
    loads_or_names(lambda: load_omniglot(root), "images_evaluation.zip")


OMNIGLOT_CACHE_DAMAGE: dict[str, tuple[str, Callable[[bytes, np.random.Generator], bytes]]] = {
    "npy truncated": ("npy", lambda data, rng: cut(data, rng, 1, len(data))),
    "npy random bytes": ("npy", lambda data, rng: rng.bytes(len(data))),
    "npy garbled header": ("npy", lambda data, rng: data[:10] + bytes(
        rng.integers(32, 127, 100, dtype=np.uint8)) + data[110:]),
    "npy holds int16": ("npy", lambda data, rng: npy_bytes(np.zeros((6, 3, 28, 28, 1),
                                                                     np.int16))),
    "npy of another size": ("npy", lambda data, rng: npy_bytes(np.zeros((6, 3, 14, 14, 1),
                                                                         np.uint8))),
    "json not a list": ("json", lambda data, rng: b'{"names": 1}'),
    "json of numbers": ("json", lambda data, rng: json.dumps(list(range(6))).encode()),
    "json random bytes": ("json", lambda data, rng: rng.bytes(len(data))),
    "json too short": ("json", lambda data, rng: b'["a"]'),
}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize("damage", OMNIGLOT_CACHE_DAMAGE)
def test_omniglot_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    root = write_fake_omniglot(tmp_path / "omni")
    first = load_omniglot(root)
    suffix, change = OMNIGLOT_CACHE_DAMAGE[damage]
    (cached,) = (tmp_path / "cache").glob(f"omniglot_*.{suffix}")
    cached.write_bytes(change(cached.read_bytes(), rng_for(damage)))
    decoded = []
    decode = omniglot_mod._decode
    monkeypatch.setattr(omniglot_mod, "_decode", lambda *a: decoded.append(1) or decode(*a))
    again = load_omniglot(root)
    assert decoded == [1]  # the damaged cache was not used but rebuilt
    assert again.class_names == first.class_names
    for a, b in zip(again.classes, first.classes, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- glyphs' cache ----------------------------------------------------------------------------
GLYPHS_CACHE_DAMAGE: dict[str, tuple[str, bytes]] = {
    "npy truncated": ("npy", b"\x93NUMPY\x01\x00v\x00{'descr'"),
    "npy garbled header": ("npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '|u1',\n"),
    "npy is an npz": ("npy", b"PK\x03\x04" + bytes(40)),
    "json is a list": ("json", b'["U+0041 A"]'),
    "json names not strings": ("json", json.dumps({"class_names": [1] * glyphs.NUM_CLASSES})
                               .encode()),
    "json random bytes": ("json", bytes(range(256))),
}


@pytest.mark.parametrize("damage", GLYPHS_CACHE_DAMAGE)
def test_glyphs_damaged_cache_is_not_used(damage):
    size = 8  # a small valid cache: zeros of the right shape
    npy, meta = glyphs._cache_paths(size, 0)
    np.save(npy, np.zeros((glyphs.NUM_CLASSES, glyphs.SAMPLES_PER_CLASS, size, size), np.uint8))
    names = [f"class {i}" for i in range(glyphs.NUM_CLASSES)]
    meta.write_text(json.dumps({"class_names": names}))
    assert glyphs._read_cache(size, 0) is not None
    suffix, data = GLYPHS_CACHE_DAMAGE[damage]
    (npy if suffix == "npy" else meta).write_bytes(data)
    assert glyphs._read_cache(size, 0) is None


# ---- dense NumPy caches ---------------------------------------------------------------------
def good_dense(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)


def header_length(array: np.ndarray) -> int:
    return len(npy_bytes(array)) - array.nbytes


def with_pixels(dtype: type | str, value: object) -> Callable[[np.random.Generator], bytes]:
    return lambda rng: npy_bytes(np.full((2, 3, 8, 8), value, dtype))


def object_array(*records: object) -> np.ndarray:
    out = np.empty(len(records), object)
    for i, r in enumerate(records):
        out[i] = r
    return out


def pickled_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


DENSE_DAMAGE: dict[str, Callable[[np.random.Generator], bytes]] = {
    "random bytes": lambda rng: rng.bytes(500),
    "empty file": lambda rng: b"",
    "truncated data": lambda rng: cut(npy_bytes(good_dense(rng)), rng, 130, 128 + 384),
    "truncated header": lambda rng: cut(npy_bytes(good_dense(rng)), rng, 6, 120),
    "garbled header": lambda rng: (lambda data: data[:10] + bytes(rng.integers(
        32, 127, 100, dtype=np.uint8)) + data[110:])(npy_bytes(good_dense(rng))),
    "npz archive": lambda rng: (lambda buf: np.savez(buf, images=good_dense(rng))
                                or buf.getvalue())(io.BytesIO()),
    "object array": lambda rng: pickled_npy(object_array(*good_dense(rng))),
    "complex pixels": with_pixels(np.complex64, 1 + 1j),
    "string pixels": with_pixels("<U1", "a"),
    "NaN pixels": with_pixels(np.float32, np.nan),
    "integers beyond 255": with_pixels(np.int32, 256),
    "negative integers": with_pixels(np.int8, -1),
    "3 dimensions": lambda rng: npy_bytes(np.zeros((2, 3, 8), np.uint8)),
    "2 channels": lambda rng: npy_bytes(np.zeros((2, 3, 8, 8, 2), np.uint8)),
    "images of size 0": lambda rng: npy_bytes(np.zeros((2, 3, 0, 8), np.uint8)),
    "no classes": lambda rng: npy_bytes(np.zeros((0, 3, 8, 8), np.uint8)),
    "empty classes": lambda rng: npy_bytes(np.zeros((2, 0, 8, 8), np.uint8)),
}


@pytest.mark.parametrize("damage", DENSE_DAMAGE)
def test_dense_numpy_cache(tmp_path, damage):
    (tmp_path / "toy.npy").write_bytes(DENSE_DAMAGE[damage](rng_for(damage)))
    expect_error(lambda: load_numpy_cache(tmp_path / "toy.npy", image_size=8), "toy.npy")
    # through the registry too (the same loader, found by name)
    expect_error(lambda: load_dataset("toy", data_numpy_dir=tmp_path, image_size=8), "toy.npy")


@pytest.mark.parametrize("seed", CORRUPTION_SEEDS)
def test_dense_numpy_cache_random_corruption_of_the_header(tmp_path, seed):
    rng = np.random.default_rng([SEED, seed])
    data = npy_bytes(good_dense(rng))
    (tmp_path / "toy.npy").write_bytes(flip_bytes(data, rng, 2, header_length(good_dense(rng))))
    loads_or_names(lambda: load_numpy_cache(tmp_path / "toy.npy", image_size=8), "toy.npy")


# ---- NumPy cache folders --------------------------------------------------------------------
def npy_with_pickle(payload: bytes, shape: tuple[int, ...] = (1,)) -> bytes:
    """An object-array .npy header followed by an arbitrary pickle."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|O", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def good_records(rng: np.random.Generator) -> np.ndarray:
    return object_array(rng.integers(0, 256, (2, 8, 8), dtype=np.uint8),
                        rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8))


FOLDER_DAMAGE: dict[str, Callable[[np.random.Generator], bytes]] = {
    "random bytes": lambda rng: rng.bytes(500),
    "empty file": lambda rng: b"",
    "truncated pickle": lambda rng: (lambda data: cut(data, rng, 140, len(data) - 1))(
        pickled_npy(good_records(rng))),
    "0-d object array (a saved dict)": lambda rng: pickled_npy(np.array({"images": 1})),
    "plain pickle": lambda rng: pickle.dumps(list(good_records(rng))),
    "npz archive": lambda rng: (lambda buf: np.savez(buf, *good_records(rng))
                                or buf.getvalue())(io.BytesIO()),
    "pickle of a missing module": lambda rng: npy_with_pickle(b"cno_such_module\nthing\n."),
    "pickle of a list": lambda rng: npy_with_pickle(pickle.dumps([1, 2]), shape=(2,)),
    "2-d object array": lambda rng: pickled_npy(good_records(rng).reshape(2, 1)),
    "no classes": lambda rng: pickled_npy(np.empty(0, object)),
    "ragged class": lambda rng: pickled_npy(object_array(
        [np.zeros((8, 8), np.uint8), np.zeros((4, 4), np.uint8)])),
    "class is a string": lambda rng: pickled_npy(object_array("images", None)),
    "class of objects": lambda rng: pickled_npy(object_array(np.full((2, 8, 8), None))),
    "empty class": lambda rng: pickled_npy(object_array(np.zeros((0, 8, 8), np.uint8))),
    "complex pixels": lambda rng: pickled_npy(object_array(np.ones((2, 8, 8), np.complex64))),
    "images of size 0": lambda rng: pickled_npy(object_array(np.zeros((2, 0, 8), np.uint8))),
    "numeric array of 3 dimensions": lambda rng: npy_bytes(np.zeros((2, 8, 8), np.uint8)),
}


def numpy_folder(root: Path, bad: bytes, rng: np.random.Generator) -> Path:
    """``root/toy/``: a good ``a.npy`` and the bad ``b.npy``."""
    folder = root / "toy"
    folder.mkdir()
    (folder / "a.npy").write_bytes(pickled_npy(good_records(rng)))
    (folder / "b.npy").write_bytes(bad)
    return folder


def test_good_numpy_folder_loads(tmp_path):
    folder = numpy_folder(tmp_path, pickled_npy(good_records(rng_for("good"))), rng_for("good"))
    assert load_numpy_cache(folder, image_size=8).samples_per_class == [2, 3, 2, 3]


@pytest.mark.parametrize("damage", FOLDER_DAMAGE)
def test_numpy_cache_folder(tmp_path, damage):
    rng = rng_for(damage)
    folder = numpy_folder(tmp_path, FOLDER_DAMAGE[damage](rng), rng)
    expect_error(lambda: load_numpy_cache(folder, image_size=8), "b.npy")
    expect_error(lambda: load_dataset("toy", data_numpy_dir=tmp_path, image_size=8), "b.npy")


@pytest.mark.parametrize("seed", CORRUPTION_SEEDS)
def test_numpy_cache_folder_random_corruption(tmp_path, seed):
    rng = np.random.default_rng([SEED, seed])
    folder = numpy_folder(tmp_path, flip_bytes(pickled_npy(good_records(rng)), rng, 2), rng)
    loads_or_names(lambda: load_numpy_cache(folder, image_size=8), "b.npy")


def test_numpy_dir_that_is_a_file(tmp_path):
    (tmp_path / "caches").write_text("not a folder")
    message = expect_error(lambda: load_dataset("toy", data_numpy_dir=tmp_path / "caches"),
                           "caches")
    assert "is a file, not a folder" in message


# ---- image folders --------------------------------------------------------------------------
def jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


IMAGE_DAMAGE: dict[str, tuple[str, Callable[[np.random.Generator], bytes]]] = {
    **{f"png {name}": ("x.png", make) for name, make in PNG_DAMAGE.items()},
    "jpeg truncated": ("x.jpg", lambda rng: (lambda data: cut(data, rng, 100, len(data) - 100))(
        jpeg(rng))),
    "jpeg random bytes": ("x.jpg", lambda rng: b"\xff\xd8\xff" + rng.bytes(300)),
    "gif text file": ("x.GIF", lambda rng: b"GIF89a but not really"),
}


def image_folder(root: Path, name: str, data: bytes) -> Path:
    """``root/a_ok/ok.png`` and the file ``root/b_bad/<name>``."""
    (root / "a_ok").mkdir(parents=True)
    (root / "b_bad").mkdir()
    (root / "a_ok" / "ok.png").write_bytes(png(8, 8))
    (root / "b_bad" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("damage", IMAGE_DAMAGE)
def test_image_folder_damaged_image(tmp_path, damage):
    name, make = IMAGE_DAMAGE[damage]
    root = image_folder(tmp_path / "mine", name, make(rng_for(damage)))
    expect_error(lambda: load_image_folder(root, image_size=8), name)
    expect_error(lambda: load_dataset("folder", data_dir=root, image_size=8), name)


@pytest.mark.parametrize("seed", CORRUPTION_SEEDS)
def test_image_folder_random_corruption(tmp_path, seed):
    rng = np.random.default_rng([SEED, seed])
    root = image_folder(tmp_path / "mine", "x.png", flip_bytes(png(20, 20, 7), rng, 3))
    loads_or_names(lambda: load_image_folder(root, image_size=8), "x.png")


def test_image_folder_ignores_non_image_files_and_names_an_empty_class(tmp_path):
    rng = rng_for("non-images")
    root = image_folder(tmp_path / "mine", "y.png", png(8, 8, 9))
    for name in ("notes.txt", "Thumbs.db", ".DS_Store", "image.png.part"):
        (root / "b_bad" / name).write_bytes(rng.bytes(100))
    ds = load_image_folder(root, image_size=8)
    assert ds.samples_per_class == [1, 1] and (ds.classes[1] == 9).all()
    (root / "b_bad" / "y.png").unlink()
    expect_error(lambda: load_image_folder(root, image_size=8), "b_bad")


def test_image_folder_root_that_is_a_file(tmp_path):
    (tmp_path / "photos.png").write_bytes(png(8, 8))
    message = expect_error(lambda: load_image_folder(tmp_path / "photos.png"), "photos.png")
    assert "is a file, not a folder" in message
    message = expect_error(lambda: load_dataset("folder", data_dir=tmp_path / "photos.png"),
                           "photos.png")
    assert "is a file, not a folder" in message


# ---- miniImageNet and tieredImageNet (fixtures: tests/imagenet_fixtures.py) ------------------
def load_mini(root: Path) -> ClassDataset:
    return load_imagenet("miniimagenet", root, image_size=4)


def load_tiered(root: Path) -> ClassDataset:
    return load_imagenet("tieredimagenet", root, image_size=4)


def no_temporary_files(tmp_path: Path) -> None:
    """A build that failed left nothing behind in the cache."""
    assert not list((tmp_path / "cache").glob(".*")), "a temporary cache file was left"


def mini_train(root: Path) -> dict:
    return pickle.loads((root / "mini-imagenet-cache-train.pkl").read_bytes())


def with_entry(data: dict, key: str, value: object) -> bytes:
    return pickle.dumps({**data, key: value})


MINI_PICKLE_DAMAGE: dict[str, Callable[[dict, bytes, np.random.Generator], bytes]] = {
    "random bytes": lambda d, raw, rng: rng.bytes(500),
    "empty file": lambda d, raw, rng: b"",
    "truncated": lambda d, raw, rng: cut(raw, rng, 1, len(raw) - 1),
    "pickle of a missing module": lambda d, raw, rng: b"cno_such_module\nthing\n.",
    "a list, not a dict": lambda d, raw, rng: pickle.dumps([d["image_data"], d["class_dict"]]),
    "no class_dict": lambda d, raw, rng: pickle.dumps({"image_data": d["image_data"]}),
    "float32 images": lambda d, raw, rng: with_entry(d, "image_data",
                                                     d["image_data"].astype(np.float32)),
    "gray images [N, H, W]": lambda d, raw, rng: with_entry(d, "image_data",
                                                            d["image_data"][..., 0]),
    "images a list": lambda d, raw, rng: with_entry(d, "image_data", list(d["image_data"])),
    "class_dict a list": lambda d, raw, rng: with_entry(d, "class_dict", list(d["class_dict"])),
    "index out of range": lambda d, raw, rng: with_entry(
        d, "class_dict", {**d["class_dict"], min(d["class_dict"]): [len(d["image_data"])]}),
    "empty class": lambda d, raw, rng: with_entry(
        d, "class_dict", {**d["class_dict"], min(d["class_dict"]): []}),
    "index strings": lambda d, raw, rng: with_entry(
        d, "class_dict", {**d["class_dict"], min(d["class_dict"]): ["0"]}),
}


@pytest.mark.parametrize("damage", MINI_PICKLE_DAMAGE)
def test_mini_damaged_pickle(tmp_path, damage):
    root = write_mini_pickles(tmp_path / "mini", per_class=1, size=4)
    path = root / "mini-imagenet-cache-train.pkl"
    path.write_bytes(MINI_PICKLE_DAMAGE[damage](mini_train(root), path.read_bytes(),
                                                rng_for(damage)))
    expect_error(lambda: load_mini(root), "mini-imagenet-cache-train.pkl")
    expect_error(lambda: load_dataset("miniimagenet:test", data_dir=root, image_size=4),
                 "mini-imagenet-cache-train.pkl")  # any split needs the whole dataset


@pytest.mark.parametrize("seed", CORRUPTION_SEEDS)
def test_mini_random_corruption_of_a_pickle(tmp_path, seed):
    root = write_mini_pickles(tmp_path / "mini", per_class=1, size=4)
    path = root / "mini-imagenet-cache-val.pkl"
    path.write_bytes(flip_bytes(path.read_bytes(), np.random.default_rng([SEED, seed]), 3))
    loads_or_names(lambda: load_mini(root), "mini-imagenet-cache-val.pkl")


CSV_DAMAGE: dict[str, tuple[str, Callable[[bytes, np.random.Generator], bytes]]] = {
    "csv random bytes": ("train.csv", lambda data, rng: b"\xff\xfe" + rng.bytes(300)),
    "csv empty": ("train.csv", lambda data, rng: b""),
    "csv without header": ("train.csv", lambda data, rng: data.split(b"\n", 1)[1]),
    "csv short row": ("train.csv", lambda data, rng: data + b"n0000000000000001.jpg\n"),
    "csv header only": ("train.csv", lambda data, rng: b"filename,label\n"),
    "jpeg truncated": ("JPEG", lambda data, rng: cut(data, rng, 100, len(data) - 100)),
    "jpeg random bytes": ("JPEG", lambda data, rng: b"\xff\xd8\xff" + rng.bytes(300)),
    "jpeg empty": ("JPEG", lambda data, rng: b""),
}


@pytest.mark.parametrize("damage", CSV_DAMAGE)
def test_mini_csv_damage(tmp_path, damage):
    root = write_mini_csv(tmp_path / "mini", per_class=1, size=8)
    target, change = CSV_DAMAGE[damage]
    path = root / target if target.endswith(".csv") else sorted((root / "images").iterdir())[7]
    path.write_bytes(change(path.read_bytes(), rng_for(damage)))
    expect_error(lambda: load_mini(root), path.name)
    no_temporary_files(tmp_path)


def test_mini_csv_image_missing(tmp_path):
    root = write_mini_csv(tmp_path / "mini", per_class=1, size=8)
    missing = sorted((root / "images").iterdir())[-1]
    missing.unlink()
    message = expect_error(lambda: load_mini(root), missing.name)
    assert "No such file" in message


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def npz_claiming_more_rows(images: np.ndarray) -> bytes:
    """A consistent zip whose images.npy header says one image more than it stores."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (len(images) + 1, *images.shape[1:])})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("images.npy", header.getvalue() + images.tobytes())
    return buf.getvalue()


def tiered_train_images(root: Path) -> np.ndarray:
    return np.load(root / "train_images.npz")["images"]


NPZ_DAMAGE: dict[str, Callable[[np.ndarray, bytes, np.random.Generator], bytes]] = {
    "random bytes": lambda im, raw, rng: rng.bytes(len(raw)),
    "empty file": lambda im, raw, rng: b"",
    "truncated": lambda im, raw, rng: cut(raw, rng, 1, len(raw) - 1),
    "no images array": lambda im, raw, rng: npz_bytes(data=im),
    "float32 images": lambda im, raw, rng: npz_bytes(images=im.astype(np.float32)),
    "gray images [N, H, W]": lambda im, raw, rng: npz_bytes(images=im[..., 0]),
    "4 channels": lambda im, raw, rng: npz_bytes(images=np.concatenate([im, im[..., :1]], -1)),
    "Fortran order": lambda im, raw, rng: npz_bytes(images=np.asfortranarray(im)),
    "object array": lambda im, raw, rng: (lambda buf: np.savez(buf, images=np.array(
        [None, 1], object)) or buf.getvalue())(io.BytesIO()),
    "fewer images than labels": lambda im, raw, rng: npz_bytes(images=im[:-1]),
    "header claims more images": lambda im, raw, rng: npz_claiming_more_rows(im),
    "garbled array header": lambda im, raw, rng: (lambda buf: (
        zipfile.ZipFile(buf, "w").writestr("images.npy", b"\x93NUMPY\x01\x00v\x00{'descr'")
        or buf.getvalue()))(io.BytesIO()),
}


@pytest.mark.parametrize("damage", NPZ_DAMAGE)
def test_tiered_damaged_npz(tmp_path, damage):
    root = write_tiered(tmp_path / "tiered", "npz", size=4)
    path = root / "train_images.npz"
    path.write_bytes(NPZ_DAMAGE[damage](tiered_train_images(root), path.read_bytes(),
                                        rng_for(damage)))
    expect_error(lambda: load_tiered(root), "train_images.npz")
    no_temporary_files(tmp_path)


@pytest.mark.parametrize("seed", CORRUPTION_SEEDS)
def test_tiered_random_corruption_of_a_stored_npz(tmp_path, seed):
    root = write_tiered(tmp_path / "tiered", "npz", size=4, compressed=False)
    path = root / "test_images.npz"
    path.write_bytes(flip_bytes(path.read_bytes(), np.random.default_rng([SEED, seed]), 3))
    loads_or_names(lambda: load_tiered(root), "test_images.npz")


LABELS_DAMAGE: dict[str, Callable[[dict, bytes, np.random.Generator], bytes]] = {
    "random bytes": lambda d, raw, rng: rng.bytes(200),
    "empty file": lambda d, raw, rng: b"",
    "truncated": lambda d, raw, rng: cut(raw, rng, 1, len(raw) - 1),
    "a bare array": lambda d, raw, rng: pickle.dumps(d["label_specific"]),
    "no label key": lambda d, raw, rng: pickle.dumps({"label_general": d["label_general"]}),
    "float labels": lambda d, raw, rng: with_entry(d, "label_specific",
                                                   d["label_specific"].astype(np.float32)),
    "2-d labels": lambda d, raw, rng: with_entry(d, "label_specific",
                                                 d["label_specific"][:, None]),
    "no labels": lambda d, raw, rng: with_entry(d, "label_specific", []),
    "one label too many": lambda d, raw, rng: with_entry(
        d, "label_specific", np.r_[d["label_specific"], d["label_specific"][:1]]),
}


@pytest.mark.parametrize("form", ["png", "npz"])
@pytest.mark.parametrize("damage", LABELS_DAMAGE)
def test_tiered_damaged_labels(tmp_path, damage, form):
    root = write_tiered(tmp_path / "tiered", form, size=4, label_key="label_specific")
    path = root / "train_labels.pkl"
    data = pickle.loads(path.read_bytes())
    path.write_bytes(LABELS_DAMAGE[damage](data, path.read_bytes(), rng_for(damage)))
    message = expect_error(lambda: load_tiered(root), "train_labels.pkl")
    if damage == "one label too many":  # the images' file or the labels' is wrong: both named
        assert f"train_images{'_png.pkl' if form == 'png' else '.npz'}" in message
    no_temporary_files(tmp_path)


def pngs_with(root: Path, index: int, item: object) -> bytes:
    pngs = pickle.loads((root / "train_images_png.pkl").read_bytes())
    pngs[index] = item
    return pickle.dumps(pngs)


PNG_PICKLE_DAMAGE: dict[str, tuple[str, Callable[[Path, bytes, np.random.Generator], bytes]]] = {
    "random bytes": ("train_images_png.pkl", lambda root, raw, rng: rng.bytes(500)),
    "truncated": ("train_images_png.pkl", lambda root, raw, rng: cut(raw, rng, 1, len(raw) - 1)),
    "a dict": ("train_images_png.pkl", lambda root, raw, rng: pickle.dumps({"images": 1})),
    "one image missing": ("train_images_png.pkl", lambda root, raw, rng: pickle.dumps(
        pickle.loads(raw)[:-1])),
    **{f"image {name}": ("train_images_png.pkl[5]",
                         lambda root, raw, rng, make=make: pngs_with(root, 5, make(rng)))
       for name, make in PNG_DAMAGE.items()},
    "image an int": ("train_images_png.pkl[5]", lambda root, raw, rng: pngs_with(root, 5, 7)),
    "image float bytes": ("train_images_png.pkl[5]", lambda root, raw, rng: pngs_with(
        root, 5, np.zeros(10, np.float32))),
}


@pytest.mark.parametrize("damage", PNG_PICKLE_DAMAGE)
def test_tiered_damaged_png_pickle(tmp_path, damage):
    root = write_tiered(tmp_path / "tiered", "png", size=4)
    name, change = PNG_PICKLE_DAMAGE[damage]
    path = root / "train_images_png.pkl"
    path.write_bytes(change(root, path.read_bytes(), rng_for(damage)))
    expect_error(lambda: load_tiered(root), name)
    no_temporary_files(tmp_path)


IMAGENET_CACHE_DAMAGE: dict[str, tuple[str, Callable[[bytes, np.random.Generator], bytes]]] = {
    **{k: v for k, v in OMNIGLOT_CACHE_DAMAGE.items() if k.startswith("npy")},
    "npy holds int16": ("npy", lambda data, rng: npy_bytes(np.zeros((100, 4, 4, 3), np.int16))),
    "npy of another size": ("npy", lambda data, rng: npy_bytes(np.zeros((100, 2, 2, 3),
                                                                         np.uint8))),
    "npy one image short": ("npy", lambda data, rng: npy_bytes(np.zeros((99, 4, 4, 3),
                                                                         np.uint8))),
    "npy empty": ("npy", lambda data, rng: b""),
    "json a list": ("json", lambda data, rng: b'["a"]'),
    "json random bytes": ("json", lambda data, rng: rng.bytes(len(data))),
    "json counts off": ("json", lambda data, rng: json.dumps(
        {**json.loads(data), "counts": [2] * 100}).encode()),
    "json names missing": ("json", lambda data, rng: json.dumps(
        {"counts": json.loads(data)["counts"]}).encode()),
}


@pytest.mark.parametrize("damage", IMAGENET_CACHE_DAMAGE)
def test_imagenet_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    root = write_mini_pickles(tmp_path / "mini", per_class=1, size=4)
    first = load_mini(root)
    # In-memory copies: the damage below rewrites the mapped file in place, which no writer of
    # this project does (they replace files) and after which the old mapping must not be read.
    names, expected = first.class_names, [np.array(c) for c in first.classes]
    del first
    suffix, change = IMAGENET_CACHE_DAMAGE[damage]
    (cached,) = (tmp_path / "cache").glob(f"miniimagenet_*.{suffix}")
    cached.write_bytes(change(cached.read_bytes(), rng_for(damage)))
    decoded = []
    decode = imagenet._decode
    monkeypatch.setattr(imagenet, "_decode", lambda *a: decoded.append(1) or decode(*a))
    again = load_mini(root)
    assert decoded == [1]  # the damaged cache was not used but rebuilt
    assert again.class_names == names
    for a, b in zip(again.classes, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_mini(root).num_classes == 100 and decoded == [1]  # and the rebuild is used
