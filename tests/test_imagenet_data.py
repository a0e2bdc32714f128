"""miniImageNet and tieredImageNet (SPEC §2.1): each on-disk form, class order and counts, the
memory-mapped cache, the sampler gathering from it, the CLI, and a short natural-image run.

Fixtures (tests/imagenet_fixtures.py) are tiny folders in the exact real formats; damaged and
mistyped files are in tests/test_fuzz_loaders.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imagenet_fixtures import (
    MINI_SIZES,
    SPLITS,
    TIERED_SIZES,
    colour,
    colours_of,
    mini_wnids,
    tiered_counts,
    tiered_ids,
    write_mini_csv,
    write_mini_pickles,
    write_tiered,
)
from PIL import Image

from hypertransformer import presets
from hypertransformer.cli import main
from hypertransformer.data import imagenet
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.imagenet import load_imagenet
from hypertransformer.data.memmap import MemmapRows
from hypertransformer.data.registry import clear_memo, load_dataset, load_split
from hypertransformer.data.sampler import EpisodeSampler

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Caches go to tmp (``HT_CACHE_DIR``); no memo survives a test."""
    monkeypatch.setenv("HT_CACHE_DIR", str(tmp_path / "cache"))
    clear_memo()
    yield
    clear_memo()


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """The names of the datasets decoded (cache builds) during the test."""
    calls: list[str] = []
    real = imagenet._decode
    monkeypatch.setattr(imagenet, "_decode", lambda name, *a: calls.append(name) or
                        real(name, *a))
    return calls


def assert_colours(ds: ClassDataset, tolerance: int = 0) -> None:
    """Image j of class g has the fixture colour (g, j) (up to ``tolerance`` for JPEGs)."""
    for g, images in enumerate(colours_of(ds.classes)):
        for j, got in enumerate(images):
            assert max(abs(a - b) for a, b in zip(got, colour(g, j), strict=True)) \
                <= tolerance, (g, j, got)


def memmap_root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


# ---- the forms, class order and counts ------------------------------------------------------
@pytest.mark.parametrize("py2", [False, True], ids=["python3", "python2 pickle"])
def test_mini_pickles(tmp_path, py2):
    ds = load_imagenet("miniimagenet", write_mini_pickles(tmp_path / "mini", py2=py2))
    wnids = mini_wnids()
    assert ds.name == "miniimagenet" and ds.num_classes == 100
    # Sorted WordNet ids per split, train then val then test; Ravi's CSVs list them so too.
    assert ds.class_names == [w for s in SPLITS for w in sorted(wnids[s])]
    assert ds.class_names == [w for s in SPLITS for w in wnids[s]]
    assert ds.samples_per_class == [2] * 100 and ds.image_shape == (84, 84, 3)
    assert_colours(ds)  # classes and samples in the documented order


def test_mini_csv_with_images_of_any_size(tmp_path):
    root = write_mini_csv(tmp_path / "mini", per_class=3)
    ds = load_imagenet("miniimagenet", root)
    assert ds.class_names == [w for s in SPLITS for w in mini_wnids()[s]]
    assert ds.samples_per_class == [3] * 100 and ds.image_shape == (84, 84, 3)
    with Image.open(next((root / "images").iterdir())) as im:
        assert im.format == "JPEG"
    assert_colours(ds, tolerance=3)  # JPEG; the 100-px-wide first images were resized


@pytest.mark.parametrize("form,options", [
    ("npz", {"label_key": "labels"}),
    ("npz", {"label_key": "label_specific", "compressed": False}),
    ("png", {}),
    ("png", {"py2": True}),
    ("png", {"png_arrays": True}),
], ids=["npz labels", "npz label_specific stored", "png", "png python2", "png cv2 arrays"])
def test_tiered_forms(tmp_path, form, options):
    ds = load_imagenet("tieredimagenet", write_tiered(tmp_path / "tiered", form, **options))
    assert ds.name == "tieredimagenet" and ds.num_classes == 608
    assert ds.samples_per_class == [n for s in SPLITS for n in tiered_counts(s, 1)]
    named = form == "png" or options["label_key"] == "label_specific"
    # Label ids ascending within each split; names from label_specific_str when present.
    assert ds.class_names == [f"n{i:08d}" if named else f"{s}:{i}"
                              for s in SPLITS for i in tiered_ids(s)]
    assert_colours(ds)


def test_size_and_channels_are_applied_at_decode(tmp_path):
    ds = load_imagenet("miniimagenet", write_mini_pickles(tmp_path / "mini"), image_size=28,
                       channels=1)
    assert ds.image_shape == (28, 28, 1)
    r, g, b = colour(5, 1)
    assert (ds.classes[5][1] == round(0.299 * r + 0.587 * g + 0.114 * b)).all()


def test_splits_through_the_registry(tmp_path):
    root = write_mini_pickles(tmp_path / "mini", per_class=1, size=8)
    first = 0
    for split in SPLITS:
        ds = load_dataset(f"miniimagenet:{split}", data_dir=root, image_size=8, channels=3)
        assert ds.num_classes == MINI_SIZES[split]
        assert [int(c[0, 0, 0, 0]) for c in ds.classes] == list(range(first,
                                                                      first + ds.num_classes))
        first += ds.num_classes


def test_the_first_complete_form_wins(tmp_path, decodes):
    root = write_mini_csv(write_mini_pickles(tmp_path / "mini"))
    load_imagenet("miniimagenet", root)
    assert [p.name.split("_")[1] for p in (tmp_path / "cache").glob("*.npy")] == ["pickles"]
    root = write_tiered(write_tiered(tmp_path / "tiered", "png"), "npz")
    load_imagenet("tieredimagenet", root)
    assert sorted(p.name.split("_")[1] for p in (tmp_path / "cache").glob("*.npy")) == \
        ["npz", "pickles"]


# ---- what is missing or wrong in the folder --------------------------------------------------
def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="needs data_dir"):
        load_imagenet("miniimagenet", None)
    with pytest.raises(DatasetError, match="does not exist"):
        load_imagenet("tieredimagenet", tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_imagenet("tieredimagenet", tmp_path / "afile")
    with pytest.raises(DatasetError) as info:
        load_imagenet("miniimagenet", tmp_path)
    assert str(info.value) == (
        f"no miniimagenet in {tmp_path}: looked for mini-imagenet-cache-{{train,val,test}}.pkl "
        f"or {{train,val,test}}.csv with images/")
    with pytest.raises(DatasetError) as info:
        load_imagenet("tieredimagenet", tmp_path)
    assert "{train,val,test}_images.npz + {train,val,test}_labels.pkl or " \
        "{train,val,test}_images_png.pkl + {train,val,test}_labels.pkl" in str(info.value)


def test_an_incomplete_form_says_what_is_missing(tmp_path):
    root = write_mini_pickles(tmp_path / "mini")
    (root / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(DatasetError, match="found pickles files but not "
                                           "mini-imagenet-cache-val.pkl$"):
        load_imagenet("miniimagenet", root)
    root = write_mini_csv(tmp_path / "csv")
    for f in (root / "images").iterdir():
        f.unlink()
    (root / "images").rmdir()
    with pytest.raises(DatasetError, match="found csv files but not images/$"):
        load_imagenet("miniimagenet", root)
    root = write_tiered(tmp_path / "tiered", "npz")
    (root / "test_labels.pkl").unlink()
    with pytest.raises(DatasetError, match="found npz files but not test_labels.pkl"):
        load_imagenet("tieredimagenet", root)


def test_a_split_with_the_wrong_number_of_classes(tmp_path):
    import pickle

    root = write_mini_pickles(tmp_path / "mini", per_class=1)
    path = root / "mini-imagenet-cache-train.pkl"
    data = pickle.loads(path.read_bytes())
    data["class_dict"].popitem()
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DatasetError, match="mini-imagenet-cache-train.pkl: the train split has "
                                           "63 classes, expected 64"):
        load_imagenet("miniimagenet", root)

    root = write_mini_csv(tmp_path / "csv", per_class=1)
    lines = (root / "test.csv").read_text().splitlines()
    (root / "test.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match="test.csv: the test split has 19 classes, "
                                           "expected 20"):
        load_imagenet("miniimagenet", root)

    root = write_tiered(tmp_path / "tiered", "npz")
    path = root / "val_labels.pkl"
    data = pickle.loads(path.read_bytes())
    data["labels"][data["labels"] == tiered_ids("val")[0]] = tiered_ids("val")[1]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DatasetError, match="val_labels.pkl: the val split has 96 classes, "
                                           "expected 97"):
        load_imagenet("tieredimagenet", root)


# ---- the cache ------------------------------------------------------------------------------
def test_second_load_maps_the_cache_without_decoding(tmp_path, decodes):
    root = write_tiered(tmp_path / "tiered", "png")
    first = load_imagenet("tieredimagenet", root)
    assert decodes == ["tieredimagenet"]
    again = load_imagenet("tieredimagenet", root)
    assert decodes == ["tieredimagenet"]  # read from the cache
    (npy,) = (tmp_path / "cache").glob("tieredimagenet_png_84px_3ch_*.npy")
    for ds in (first, again):
        roots = {id(memmap_root(c)) for c in ds.classes}
        assert len(roots) == 1  # every class is a view of one memmap...
        root_array = memmap_root(ds.classes[0])
        assert isinstance(root_array, np.memmap) and Path(root_array.filename) == npy
        assert isinstance(ds.classes[0], np.memmap) and not ds.classes[0].flags.writeable
    for a, b in zip(first.classes, again.classes, strict=True):
        np.testing.assert_array_equal(a, b)
    # ...also through the registry, after the preset range picks the split.
    test = load_dataset("tieredimagenet:test", data_dir=root, image_size=84, channels=3)
    assert decodes == ["tieredimagenet"] and test.num_classes == TIERED_SIZES["test"]
    assert memmap_root(test.classes[0]) is not None
    assert isinstance(memmap_root(test.classes[0]), np.memmap)
    # Another size is another cache; a changed source file is a new key.
    load_imagenet("tieredimagenet", root, image_size=42)
    assert decodes == ["tieredimagenet"] * 2
    os.utime(root / "val_labels.pkl", ns=(1, 1))
    load_imagenet("tieredimagenet", root)
    assert decodes == ["tieredimagenet"] * 3


def test_sampler_gathers_from_the_memmap_without_a_copy(tmp_path):
    """The episodes of a memory-mapped split equal, bit for bit, those of the same classes held
    in memory (the sampler's packed copy), natural-image augmentations included."""
    root = write_tiered(tmp_path / "tiered", "npz", per_class=3)
    cfg = presets.load("tieredimagenet_5shot", data_dir=str(root), samples_transformer=10,
                       samples_cnn=15)
    mapped = load_split(cfg, "train")
    in_memory = ClassDataset(mapped.name, [np.array(c) for c in mapped.classes],
                             mapped.class_names)
    samplers = [EpisodeSampler.from_config(ds, cfg, train=True, seed=3)
                for ds in (mapped, in_memory)]
    images = samplers[0]._images
    assert isinstance(images, MemmapRows) and images.array is memmap_root(mapped.classes[0])
    assert isinstance(samplers[1]._images, torch.Tensor)
    for _ in range(3):
        a, b = (s.sample(2) for s in samplers)
        for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.support_x.shape == (2, 10, 3, 84, 84)


def test_memory_stays_far_below_the_decoded_size(tmp_path, monkeypatch):
    """Decoding streams the npz a chunk at a time into the cache file, and a sampler on the
    mapped split allocates nothing in proportion to it: the heap's peak (tracemalloc, which
    sees NumPy's and Python's allocations) stays a small fraction of the decoded bytes."""
    import tracemalloc

    root = write_tiered(tmp_path / "tiered", "npz", per_class=2, compressed=False)
    monkeypatch.setattr(imagenet, "_CHUNK", 32)
    decoded = sum(sum(tiered_counts(s, 2)) for s in SPLITS) * 84 * 84 * 3
    tracemalloc.start()
    try:
        ds = load_imagenet("tieredimagenet", root)
        assert tracemalloc.get_traced_memory()[1] < decoded / 8
        train = ds.subset(range(TIERED_SIZES["train"]))
        tracemalloc.reset_peak()
        EpisodeSampler(train, num_labels=5, support_size=5, query_size=10).sample(2)
        assert tracemalloc.get_traced_memory()[1] < decoded / 10  # a copy: the split, ~58%
    finally:
        tracemalloc.stop()


# ---- the command line -----------------------------------------------------------------------
def cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hypertransformer.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=300)


def test_data_info_reports_100_and_608_classes(tmp_path):
    """The issue's done-when checks, through the real command."""
    env = dict(os.environ, HT_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    mini = write_mini_pickles(tmp_path / "mini", per_class=1)
    proc = cli("data", "info", "miniimagenet", "--data-dir", str(mini), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["num_classes"] == 100 and info["image_shape"] == [84, 84, 3]
    assert info["samples_per_class"] == {"min": 1, "max": 1, "total": 100}
    tiered = write_tiered(tmp_path / "tiered", "npz")
    proc = cli("data", "info", "tieredimagenet", "--data-dir", str(tiered), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["num_classes"] == 608 and info["image_shape"] == [84, 84, 3]
    assert info["samples_per_class"]["total"] == sum(
        sum(tiered_counts(s, 1)) for s in SPLITS)


def test_data_show_draws_colour_episodes(tmp_path, capsys):
    root = write_mini_pickles(tmp_path / "mini", per_class=3)
    out = tmp_path / "sheet.png"
    code = main(["data", "show", "miniimagenet:test", "--data-dir", str(root), "--shots", "1",
                 "--queries", "2", "--episodes", "1", "--out", str(out)])
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # Test classes 80-99 are (80..99, 0, 255 - 40 j): strongly red-blue, never gray.
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 60).sum() > 1000


def test_data_prepare_into_a_cache_folder(tmp_path, capsys, decodes, monkeypatch):
    root = write_tiered(tmp_path / "tiered", "npz")
    dest = tmp_path / "prepared"
    code = main(["data", "prepare", "tieredimagenet", "--from", str(root), "--dest", str(dest)])
    out = capsys.readouterr().out
    assert code == 0 and decodes == ["tieredimagenet"]
    (npy,) = dest.glob("tieredimagenet_npz_84px_3ch_*.npy")
    assert f"608 classes, {sum(sum(tiered_counts(s, 1)) for s in SPLITS)} images of 84x84x3 " \
           f"in {npy}" in out
    assert f"HT_CACHE_DIR={dest}" in out
    monkeypatch.setenv("HT_CACHE_DIR", str(dest))
    load_dataset("tieredimagenet:train", data_dir=root, image_size=84, channels=3)
    assert decodes == ["tieredimagenet"]  # the prepared cache was used
    assert main(["data", "prepare", "miniimagenet", "--from", str(root)]) == 2
    assert "no miniimagenet in" in capsys.readouterr().err


# ---- the natural-image path end to end ------------------------------------------------------

def test_train_and_evaluate_on_colour_episodes(tmp_path, one_thread):
    from hypertransformer.evaluation.evaluator import evaluate_checkpoint
    from hypertransformer.training import train

    root = write_mini_pickles(tmp_path / "mini", per_class=3)
    cfg = presets.load("miniimagenet_1shot", data_dir=str(root), samples_cnn=10,
                       embedding_dim=8, heads=2, num_layers=1, shared_features_dim=8,
                       default_num_channels=4, num_layerwise_features=4, train_steps=2,
                       steps_between_saves=1, num_task_evals=3, num_eval_batches=2,
                       eval_batch_size=10)
    assert (cfg.image_size, cfg.image_channels, cfg.cnn_activation,
            cfg.transformer_nonlinearity) == (84, 3, "lrelu", "lrelu")
    # Training episodes are colour 84 px, with the natural-image augmentations applied.
    train_split = load_split(cfg, "train")
    plain = cfg.replace(apply_image_augmentations=False)
    a, b = (EpisodeSampler.from_config(train_split, c, train=True, seed=0).sample(1)
            for c in (cfg, plain))
    assert a.support_x.shape == (1, 5, 3, 84, 84) and a.query_x.shape == (1, 10, 3, 84, 84)
    assert torch.equal(a.classes, b.classes) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, b.support_x)
    assert not torch.equal(a.query_x, b.query_x)

    log_dir = tmp_path / "run"
    train(cfg, log_dir, progress=False, log_every=1, heldout_episodes=2)
    assert json.loads((log_dir / "done.json").read_text()) == {"step": 2, "finished": True}
    record = evaluate_checkpoint(log_dir, "test")
    assert record["dataset"] == "miniimagenet:80-99" and record["num_tasks"] == 3
    assert 0.0 <= record["accuracy"] <= 1.0 and record["step"] == 2


def test_continual_ht_on_tiered_colour_sequences(tmp_path, one_thread):
    """The tieredImageNet CHT presets train and evaluate on the real tiered format: sequences
    of colour 84-px tasks, a matrix of 2·L rows."""
    from hypertransformer.evaluation.evaluator import evaluate_checkpoint
    from hypertransformer.training import train

    root = write_tiered(tmp_path / "tiered", per_class=2)
    for scenario in ("task", "class"):
        cfg = presets.load(f"cht_tieredimagenet_{scenario}", data_dir=str(root),
                           samples_transformer=5, samples_cnn=5, cht_tasks=2,
                           episodes_per_step=1, embedding_dim=8, heads=2, num_layers=1,
                           shared_features_dim=8, default_num_channels=4,
                           num_layerwise_features=4, train_steps=1, steps_between_saves=1,
                           num_task_evals=2, eval_batch_size=5)
        assert (cfg.model_type, cfg.cht_scenario, cfg.image_size, cfg.image_channels) == (
            "cht", scenario, 84, 3)
        log_dir = tmp_path / scenario
        train(cfg, log_dir, progress=False, log_every=1, heldout_episodes=1)
        record = evaluate_checkpoint(log_dir, "test")
        assert record["dataset"] == "tieredimagenet:448-607"
        assert record["scenario"] == scenario and record["tasks_per_sequence"] == 4
        assert [len(row) for row in record["accuracy_matrix"]] == [1, 2, 3, 4]
        # class-incremental: after 4 tasks the softmax runs over 4·5 classes
        assert record["chance"] == pytest.approx(1 / 5 if scenario == "task" else 1 / 20)
        assert 0.0 <= record["final_accuracy"] <= 1.0
