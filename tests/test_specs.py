"""Class specs, the label shuffle and the dataset registry (SPEC §2.2)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from realdata import omniglot_dir

from hypertransformer.data import registry
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.glyphs import GLYPHS_SPLITS
from hypertransformer.data.registry import KNOWN_DATASETS, dataset_info, load_dataset
from hypertransformer.data.specs import parse_spec, shuffle_permutation

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("HT_CACHE_DIR", str(tmp_path / "cache"))
    registry.clear_memo()
    yield
    registry.clear_memo()


# ---- parse_spec ----------------------------------------------------------------------------
def test_parse_ranges():
    assert parse_spec("omniglot") == ("omniglot", None)
    assert parse_spec("omniglot:0-3") == ("omniglot", [0, 1, 2, 3])
    assert parse_spec("x:1-3,7") == ("x", [1, 2, 3, 7])
    assert parse_spec(" x : 9, 2-3 ") == ("x", [9, 2, 3])  # order kept, spaces ignored
    assert parse_spec("x:5-5") == ("x", [5])
    name, idx = parse_spec("omniglot:0-1149")
    assert idx == list(range(1150))


def test_parse_split_words():
    presets = {"omniglot": [(0, 1149), (1150, 1199), (1200, 1622)],
               "miniimagenet": [(0, 63), (64, 79), (80, 99)],
               "tieredimagenet": [(0, 350), (351, 447), (448, 607)],
               "glyphs": [GLYPHS_SPLITS[s] for s in ("train", "val", "test")]}
    for name, ranges in presets.items():
        for split, (a, b) in zip(("train", "val", "test"), ranges, strict=True):
            assert parse_spec(f"{name}:{split}") == (name, list(range(a, b + 1)))
    assert parse_spec("omniglot:val,test")[1] == list(range(1150, 1623))


@pytest.mark.parametrize("spec, message", [
    ("", "no dataset name"),
    (":0-3", "no dataset name"),
    ("x:", "nothing after ':'"),
    ("x:3-1", "range 3-1 is reversed; write 1-3"),
    ("x:a-b", "cannot read 'a-b'"),
    ("x:-1", "cannot read '-1'"),
    ("x:1,,2", "cannot read ''"),
    ("x:1-2-3", "cannot read '1-2-3'"),
    ("x:1-3,2", r"class\(es\) \[2\] listed twice"),
    ("mydata:train", "'mydata' has no preset splits; give class ranges such as mydata:0-9"),
])
def test_parse_errors(spec, message):
    with pytest.raises(DatasetError, match=message):
        parse_spec(spec)


# ---- shuffle_permutation -------------------------------------------------------------------
@pytest.mark.parametrize("k, seed", [(10, 1), (1623, 2022), (100, 7)])
def test_shuffle_matches_the_global_random_recipe_without_touching_it(k, seed):
    random.seed(12345)
    before = random.getstate()
    perm = shuffle_permutation(k, seed)
    assert random.getstate() == before  # no global side effect
    keys = list(range(k))
    random.seed(seed)  # the original code, verbatim
    random.shuffle(keys)
    assert perm == keys
    assert sorted(perm) == list(range(k)) and perm != list(range(k))


def test_shuffle_seed_zero_is_identity():
    assert shuffle_permutation(5, 0) == [0, 1, 2, 3, 4]
    assert shuffle_permutation(5, -3) == [0, 1, 2, 3, 4]


# ---- load_dataset --------------------------------------------------------------------------
def numpy_dir(tmp_path: Path, k: int = 12) -> Path:
    """toy.npy: class c has 2 images of constant pixel c (so classes are identifiable)."""
    data = np.broadcast_to(np.arange(k, dtype=np.uint8)[:, None, None, None], (k, 2, 4, 4))
    np.save(tmp_path / "toy.npy", np.ascontiguousarray(data))
    return tmp_path


def identities(ds: ClassDataset) -> list[int]:
    return [int(c[0, 0, 0, 0]) for c in ds.classes]


def test_load_numpy_cache_by_name_with_shuffle_then_ranges(tmp_path):
    d = numpy_dir(tmp_path)
    whole = load_dataset("toy", data_numpy_dir=d, image_size=4)
    assert whole.name == "toy" and identities(whole) == list(range(12))
    keys = shuffle_permutation(12, 5)
    shuffled = load_dataset("toy", data_numpy_dir=d, image_size=4, shuffle_labels_seed=5)
    assert identities(shuffled) == keys  # new[i] = old[keys[i]]
    part = load_dataset("toy:2-4,0", data_numpy_dir=d, image_size=4, shuffle_labels_seed=5)
    assert part.name == "toy:2-4,0"
    assert identities(part) == [keys[2], keys[3], keys[4], keys[0]]  # ranges after the shuffle
    assert part.class_names == [str(keys[i]) for i in (2, 3, 4, 0)]


def test_numpy_cache_wins_over_a_builtin_name(tmp_path):
    d = numpy_dir(tmp_path)
    (d / "toy.npy").rename(d / "omniglot.npy")
    ds = load_dataset("omniglot:0-2", data_numpy_dir=d, data_dir="/nonexistent", image_size=4)
    assert identities(ds) == [0, 1, 2]


def test_memo_decodes_once_per_source_and_size(tmp_path, monkeypatch):
    d = numpy_dir(tmp_path)
    calls = []
    real = registry._numpy

    def counting(path, image_size, channels):
        calls.append((path, image_size, channels))
        return real(path, image_size, channels)

    monkeypatch.setattr(registry, "_numpy", counting)
    a = load_dataset("toy:0-5", data_numpy_dir=d, image_size=4)
    b = load_dataset("toy:6-11", data_numpy_dir=d, image_size=4, shuffle_labels_seed=3)
    assert len(calls) == 1
    assert identities(a) == list(range(6)) and len(b.classes) == 6
    load_dataset("toy", data_numpy_dir=d, image_size=2)  # another size: loaded again
    assert len(calls) == 2
    registry.clear_memo()
    load_dataset("toy", data_numpy_dir=d, image_size=4)
    assert len(calls) == 3


def test_glyphs_and_folder_dispatch(tmp_path, monkeypatch):
    import hypertransformer.data.glyphs as glyphs

    seen = {}

    def fake_glyphs(**kwargs):
        seen.update(kwargs)
        return ClassDataset("glyphs", [np.zeros((2, 3, 3, 1), np.uint8)] * 4, list("abcd"))

    monkeypatch.setattr(glyphs, "load_glyphs", fake_glyphs)
    ds = load_dataset("glyphs:1-2", image_size=3, channels=1)
    assert seen == {"image_size": 3, "channels": 1} and ds.class_names == ["b", "c"]

    root = tmp_path / "imgs"
    for cls in ("b", "a"):
        (root / cls).mkdir(parents=True)
        (root / cls / "notes.txt").write_text("not an image: ignored")
        Image.new("L", (5, 5), 9).save(root / cls / "1.png")
    ds = load_dataset("folder:1", data_dir=root, image_size=5)
    assert ds.class_names == ["b"] and (ds.classes[0] == 9).all()
    with pytest.raises(DatasetError, match="needs data_dir"):
        load_dataset("folder")


def test_registry_errors(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="unknown dataset 'emnist'.*known: " +
                       ", ".join(KNOWN_DATASETS)):
        load_dataset("emnist")
    with pytest.raises(DatasetError, match=f"no emnist.npy or emnist/ in {tmp_path}"):
        load_dataset("emnist", data_numpy_dir=tmp_path)
    d = numpy_dir(tmp_path)
    with pytest.raises(DatasetError, match="toy has classes 0..11; asked for up to 12"):
        load_dataset("toy:10-12", data_numpy_dir=d, image_size=4)
    with pytest.raises(DatasetError, match="channels must be 1"):
        load_dataset("toy", data_numpy_dir=d, channels=2)
    monkeypatch.delenv("HT_OMNIGLOT_DIR", raising=False)
    with pytest.raises(DatasetError, match="HT_OMNIGLOT_DIR"):
        load_dataset("omniglot:train")


@pytest.mark.parametrize("name,sizes", [("miniimagenet", (64, 16, 20)),
                                        ("tieredimagenet", (351, 97, 160))])
def test_imagenet_variants_load_their_files_and_their_numpy_caches(tmp_path, name, sizes):
    """The registry reads miniImageNet/tieredImageNet from data_dir (tiny fixtures in the real
    forms, tests/imagenet_fixtures.py), and the preset splits cut them (SPEC §2.2); a NumPy
    cache of that name in data_numpy_dir still wins.  Without data_dir the error says what to
    pass; an empty one, which files it looked for."""
    from imagenet_fixtures import write_mini_pickles, write_tiered

    with pytest.raises(DatasetError, match=f"dataset '{name}' needs data_dir"):
        load_dataset(f"{name}:train")
    with pytest.raises(DatasetError, match=f"no {name} in {tmp_path}: looked for "):
        load_dataset(f"{name}:train", data_dir=tmp_path)
    root = tmp_path / name
    if name == "miniimagenet":
        write_mini_pickles(root, per_class=1, size=4)
    else:
        write_tiered(root, "npz", size=4)
    first = 0
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
        ds = load_dataset(f"{name}:{split}", data_dir=root, image_size=4, channels=3)
        got = [256 * int(c[0, 0, 0, 1]) + int(c[0, 0, 0, 0]) for c in ds.classes]  # g, g // 256
        assert got == list(range(first, first + size))
        first += size

    ids = np.arange(sum(sizes))
    images = np.zeros((len(ids), 1, 2, 2), np.uint8)  # pixels (0, 0), (0, 1): the class id
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
    np.save(tmp_path / f"{name}.npy", images)
    first = 0
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
        ds = load_dataset(f"{name}:{split}", data_numpy_dir=tmp_path, data_dir=root,
                          image_size=2)
        got = [256 * int(c[0, 0, 0, 0]) + int(c[0, 0, 1, 0]) for c in ds.classes]
        assert got == list(range(first, first + size))
        first += size


def test_dataset_info(tmp_path):
    ds = ClassDataset("x:0-2", [np.zeros((n, 5, 5, 3), np.uint8) for n in (4, 6, 5)],
                      ["p", "q", "r"])
    assert dataset_info(ds) == {"name": "x:0-2", "num_classes": 3,
                                "samples_per_class": {"min": 4, "max": 6, "total": 15},
                                "image_shape": [5, 5, 3], "first_class_names": ["p", "q", "r"]}


def test_real_omniglot_presets(monkeypatch):
    root = omniglot_dir()
    if not (root / "images_background.zip").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real Omniglot data missing at {root} (CI must have it)")
        pytest.skip(f"real Omniglot data missing at {root}")
    monkeypatch.delenv("HT_CACHE_DIR")  # the user's cache (shared with test_datasets)
    monkeypatch.setenv("HT_OMNIGLOT_DIR", str(root))
    whole = load_dataset("omniglot")
    train = load_dataset("omniglot:train", shuffle_labels_seed=2022)
    test = load_dataset("omniglot:test", shuffle_labels_seed=2022)
    assert (train.num_classes, test.num_classes) == (1150, 423)
    keys = shuffle_permutation(1623, 2022)
    assert train.class_names[:3] == [whole.class_names[k] for k in keys[:3]]
    assert test.class_names[0] == whole.class_names[keys[1200]]
    alphabets = {n.split("/")[0] for n in test.class_names}
    assert len(alphabets) > 40  # the shuffled split mixes background and evaluation alphabets
    info = dataset_info(train)
    assert info["samples_per_class"] == {"min": 20, "max": 20, "total": 23000}


def test_load_split_maps_train_val_test_onto_the_config():
    from hypertransformer import presets
    from hypertransformer.data.registry import load_split

    cfg = presets.load("glyphs_demo")
    train, val, test = (load_split(cfg, s) for s in ("train", "val", "test"))
    assert train.name == "glyphs:train" and val.name == "glyphs:val"
    assert test.name == "glyphs:test"
    assert not set(train.class_names) & set(test.class_names)
    assert not set(val.class_names) & (set(train.class_names) | set(test.class_names))
    with pytest.raises(DatasetError, match="unknown split"):
        load_split(cfg, "holdout")
    with pytest.raises(DatasetError, match="no preset val split"):
        load_split(cfg.replace(train_dataset="folder:0-3"), "val")
