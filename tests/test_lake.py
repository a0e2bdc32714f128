"""Lake et al.'s Omniglot protocol: the ``omniglot_lake`` preset, ``val_dataset`` and the
within-alphabet evaluation tasks of ``test_task_groups`` (data.sampler).

Most tests run on a small fake Omniglot in the official layout with the real alphabets (names,
sizes and id order; 2 tiny drawings per character), so they need no real data and take
seconds; one test checks that table, and the preset's ranges, against the real data.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from realdata import omniglot_dir

from hypertransformer import presets
from hypertransformer.cli import main as cli_main
from hypertransformer.config import Config
from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.registry import load_dataset, load_split, val_spec
from hypertransformer.data.sampler import EpisodeSampler, SequenceSampler, make_sampler
from hypertransformer.evaluation.evaluator import evaluate_checkpoint
from hypertransformer.evaluation.protocol import sample_tasks
from hypertransformer.training import checkpoint, trainer
from hypertransformer.training.checkpoint import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# The real Omniglot's alphabets in character-id order: (name, characters).
ALPHABETS = {
    "images_background": [
        ("Arcadian", 26), ("Armenian", 41), ("Asomtavruli_(Georgian)", 40), ("Balinese", 24),
        ("Bengali", 46), ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 14), ("Braille", 26),
        ("Cyrillic", 33), ("Early_Aramaic", 22), ("Syriac_(Estrangelo)", 23),
        ("Anglo-Saxon_Futhorc", 29), ("Futurama", 26), ("Grantha", 43), ("Greek", 24),
        ("Gujarati", 48), ("Hebrew", 22), ("Japanese_(hiragana)", 52),
        ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 16), ("Malay_(Jawi_-_Arabic)", 40),
        ("Japanese_(katakana)", 47), ("Korean", 40), ("Latin", 26), ("Alphabet_of_the_Magi", 20),
        ("Mkhedruli_(Georgian)", 41), ("Burmese_(Myanmar)", 34), ("N_Ko", 33),
        ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 14), ("Sanskrit", 42), ("Tagalog", 17),
        ("Tifinagh", 55)],
    "images_evaluation": [
        ("Angelic", 20), ("Atemayar_Qelisayer", 26), ("Atlantean", 26), ("Aurek-Besh", 26),
        ("Avesta", 26), ("Ge_ez", 26), ("Glagolitic", 45), ("Gurmukhi", 45), ("Kannada", 41),
        ("Keble", 26), ("Malayalam", 47), ("Manipuri", 40), ("Mongolian", 30),
        ("Old_Church_Slavonic_(Cyrillic)", 45), ("Oriya", 46), ("Syriac_(Serto)", 23),
        ("Sylheti", 28), ("Tengwar", 25), ("Tibetan", 42), ("ULOG", 26)],
}
DRAWERS = 2
_USER_CACHE = os.environ.get("HT_CACHE_DIR")  # read at import, before private_cache
EVALUATION = [name for name, _ in ALPHABETS["images_evaluation"]]
# A tiny model (the preset's 20-way 1-shot episodes, one query image per class).
TINY = dict(samples_cnn=20, default_num_channels=4, num_layerwise_features=4, embedding_dim=8,
            num_layers=1, heads=1, shared_feature_extractor="2-layer", shared_features_dim=8)


def alphabet(name: str) -> str:
    return name.split("/")[0]


def alphabets_of(ds: ClassDataset, classes: torch.Tensor) -> list[set[str]]:
    """The alphabets of each row (episode) of ``classes`` [T, N]."""
    return [{alphabet(ds.class_names[c]) for c in row.tolist()} for row in classes]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """The fake's decoded cache goes to a temporary folder (the real-data test uses the
    user's cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Omniglot's official layout (both zips) with the real alphabets, 2 drawings of 8x8 px
    per character."""
    root = tmp_path_factory.mktemp("omniglot")
    rng = np.random.default_rng(0)
    cid = 1
    for part, alphabets in ALPHABETS.items():
        with zipfile.ZipFile(root / f"{part}.zip", "w") as zf:
            for name, count in alphabets:
                for k in range(1, count + 1):
                    ink = rng.random((8, 8)) < 0.3
                    for drawer in range(1, DRAWERS + 1):
                        pixels = np.where(ink ^ (rng.random((8, 8)) < 0.05), 0, 255)
                        zf.writestr(f"{part}/{name}/character{k:02d}/{cid:04d}_{drawer:02d}.png",
                                    _png(pixels.astype(np.uint8)))
                    cid += 1
    return root


@pytest.fixture(scope="module")
def lake(fake_dir: Path) -> Config:
    return presets.load("omniglot_lake", data_dir=str(fake_dir), **TINY)


def grouped(ds: ClassDataset, cfg: Config, seed: int = 0) -> EpisodeSampler:
    return EpisodeSampler.from_config(ds, cfg, train=False, seed=seed)


# ---- the preset and the real data ---------------------------------------------------------

def test_preset_fields() -> None:
    cfg = presets.load("omniglot_lake")
    cpu = presets.load("omniglot_1shot_cpu")
    assert (cfg.train_dataset, cfg.val_dataset, cfg.test_dataset) == (
        "omniglot:0-908", "omniglot:909-963", "omniglot:964-1622")
    assert (cfg.shuffle_labels_seed, cfg.test_task_groups) == (0, "alphabet")
    changed = {k for k, v in cfg.to_dict().items() if v != getattr(cpu, k)}
    assert changed == {"train_dataset", "val_dataset", "test_dataset", "shuffle_labels_seed",
                       "test_task_groups", "eval_datasets"}
    assert cfg.eval_datasets == ""  # the absl evaluator evaluates the preset's own splits
    # Both new fields are data fields: a checkpoint may change them on a resume or evaluate.
    for name in ("val_dataset", "test_task_groups"):
        assert name not in checkpoint.MODEL_FIELDS and name not in checkpoint.RESUME_FIELDS
        assert getattr(Config(), name) == ""


def test_real_omniglot_alphabets_and_lake_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's table is the real data's, and the preset's ranges cut whole alphabets."""
    # The user's decoded cache (decoding the real zips takes ~10 s).
    monkeypatch.delenv("HT_CACHE_DIR", raising=False)
    if _USER_CACHE is not None:
        monkeypatch.setenv("HT_CACHE_DIR", _USER_CACHE)
    root = omniglot_dir()
    full = load_dataset("omniglot", data_dir=root)
    counts = Counter(alphabet(n) for n in full.class_names)
    order = list(dict.fromkeys(alphabet(n) for n in full.class_names))
    table = ALPHABETS["images_background"] + ALPHABETS["images_evaluation"]
    assert [(a, counts[a]) for a in order] == table
    assert sum(n for _, n in ALPHABETS["images_background"]) == 964

    cfg = presets.load("omniglot_lake", data_dir=str(root))
    val, test = load_split(cfg, "val"), load_split(cfg, "test")
    assert {alphabet(n) for n in val.class_names} == {"Tifinagh"} and val.num_classes == 55
    assert {alphabet(n) for n in test.class_names} == set(EVALUATION)
    train_alphabets = {alphabet(n) for n in load_split(cfg, "train").class_names}
    assert len(train_alphabets) == 29 and "Tifinagh" not in train_alphabets
    batch = grouped(test, cfg.replace(samples_cnn=20)).sample(30)
    assert all(len(a) == 1 for a in alphabets_of(test, batch.classes))


# ---- within-alphabet evaluation tasks -----------------------------------------------------

def test_every_evaluation_task_is_within_one_alphabet(lake: Config) -> None:
    test = load_split(lake, "test")
    sampler = grouped(test, lake)
    batch = sampler.sample(60)
    for classes in batch.classes.tolist():  # N distinct classes of one alphabet
        assert len(set(classes)) == lake.num_labels
    assert all(len(a) == 1 for a in alphabets_of(test, batch.classes))
    # Labels, balance and images are as without groups: query label i shows class i's images.
    assert torch.equal(batch.query_y.sort(dim=1).values,
                       torch.arange(20).repeat(60, 1))
    # The evaluator's tasks (one seeded generator state per task) are grouped too.
    tasks = sample_tasks(sampler, 0, 12, 2, seed=5)
    assert all(len(a) == 1 for a in alphabets_of(test, tasks.classes))
    # The group is uniform over the alphabets (not weighted by their sizes), the classes
    # uniform within it.
    many = sampler.random_classes(4000, 20)
    per_alphabet = Counter(a.pop() for a in alphabets_of(test, many))
    assert set(per_alphabet) == set(EVALUATION)
    assert all(140 < k < 260 for k in per_alphabet.values()), per_alphabet
    picked = Counter(many.flatten().tolist())
    assert len(picked) == test.num_classes


def test_grouped_sampler_is_reproducible(lake: Config) -> None:
    test = load_split(lake, "test")
    a, b = grouped(test, lake, seed=3), grouped(test, lake, seed=3)
    state = a.state_dict()
    first, again = a.sample(4), b.sample(4)
    for name in ("classes", "support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    a.load_state_dict(state)
    assert torch.equal(a.sample(4).classes, first.classes)
    assert not torch.equal(grouped(test, lake, seed=4).sample(4).classes, first.classes)
    # Evaluator tasks depend on (seed, index) only, not on how they are chunked.
    whole = sample_tasks(a, 0, 6, 1, seed=9)
    parts = [sample_tasks(b, 0, 2, 1, seed=9), sample_tasks(b, 2, 4, 1, seed=9)]
    assert torch.equal(whole.classes, torch.cat([p.classes for p in parts]))
    assert torch.equal(whole.query_x, torch.cat([p.query_x for p in parts]))


def test_training_episodes_are_not_grouped(lake: Config) -> None:
    train = load_split(lake, "train")
    sampler = make_sampler(train, lake, train=True, seed=1)
    assert isinstance(sampler, EpisodeSampler) and sampler.task_groups == ""
    batch = sampler.sample(20)
    assert sum(len(a) > 1 for a in alphabets_of(train, batch.classes)) >= 18
    # The same stream as without the option (training is unaffected).
    plain = make_sampler(train, lake.replace(test_task_groups=""), train=True, seed=1)
    assert torch.equal(plain.sample(20).classes, batch.classes)
    # And without it, evaluation tasks mix alphabets as before.
    test = load_split(lake, "test")
    mixed = grouped(test, lake.replace(test_task_groups="")).sample(20)
    assert sum(len(a) > 1 for a in alphabets_of(test, mixed.classes)) >= 18


def test_errors(lake: Config) -> None:
    train = load_split(lake, "train")
    with pytest.raises(DatasetError) as e:  # the background alphabets of < 20 characters
        grouped(train, lake)
    msg = str(e.value)
    for name, count in [("Blackfoot_(Canadian_Aboriginal_Syllabics)", 14),
                        ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 16),
                        ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 14), ("Tagalog", 17)]:
        assert f"alphabet {name} has {count} characters" in msg
    assert "20-way tasks need 20" in msg and "'omniglot:0-908'" in msg
    assert "Latin" not in msg  # 26 characters: enough

    # 19 of Angelic's 20 characters, and Atemayar_Qelisayer
    cut = load_dataset("omniglot:964-982,984-1009", data_dir=lake.data_dir)
    with pytest.raises(DatasetError, match="alphabet Angelic has 19 characters; 20-way tasks "
                                           "need 20"):
        grouped(cut, lake)
    whole = load_dataset("omniglot:964-983", data_dir=lake.data_dir)
    assert grouped(whole, lake).sample(1).classes.sort().values.tolist() == [list(range(20))]
    assert grouped(cut, lake.replace(num_labels=19, samples_transformer=19, samples_cnn=19))

    for train_flag in (False, True):  # an unknown value, also for training samplers
        with pytest.raises(DatasetError, match="test_task_groups must be '' .* or 'alphabet'.*"
                                               "got 'script'"):
            EpisodeSampler.from_config(whole, lake.replace(test_task_groups="script"),
                                       train=train_flag, seed=0)
    flat = ClassDataset("flat", [np.zeros((2, 4, 4, 1), np.uint8)] * 3, ["a/x", "b", "a/y"])
    with pytest.raises(DatasetError, match=r"class 1 \('b'\) of 'flat' has no '/'"):
        EpisodeSampler(flat, num_labels=2, support_size=2, query_size=2,
                       task_groups="alphabet")

    # Continual HT sequences: groups only for one-task (minibatch, or length 1) sequences.
    cht = lake.replace(model_type="cht", num_labels=5, samples_transformer=5, samples_cnn=5)
    for scenario in ("task", "class"):
        with pytest.raises(DatasetError, match=f"test_task_groups='alphabet'.*the {scenario}-"
                                               "incremental sequences"):
            SequenceSampler.from_config(train, cht.replace(cht_scenario=scenario),
                                        train=False, seed=0)
    test = load_split(lake, "test")
    for one_task in [SequenceSampler.from_config(test, cht.replace(cht_scenario="minibatch"),
                                                 train=False, seed=0),
                     SequenceSampler.from_config(test, cht, train=False, seed=0, num_tasks=1)]:
        batch = one_task.sample(6)
        assert all(len(a) == 1 for a in alphabets_of(test, batch.classes.flatten(0, 1)))


# ---- val_dataset --------------------------------------------------------------------------

def test_val_dataset_feeds_the_val_split_and_the_heldout_data(lake: Config) -> None:
    val = load_split(lake, "val")
    assert val.name == "omniglot:909-963"
    assert {alphabet(n) for n in val.class_names} == {"Tifinagh"}
    assert trainer._heldout_data(lake).name == "omniglot:909-963"
    # Unset: the preset val range of the training dataset's name, as before.
    default = lake.replace(val_dataset="")
    assert load_split(default, "val").name == "omniglot:val"
    assert trainer._heldout_data(default).name == "omniglot:val"
    # A dataset without preset splits: val only from val_dataset; held out = test without it.
    toy = Config(train_dataset="toy:0-9", test_dataset="toy:10-19")
    assert val_spec(toy) is None and val_spec(toy.replace(val_dataset="toy:20-24")) == \
        "toy:20-24"
    with pytest.raises(DatasetError, match="no preset val split; set val_dataset"):
        load_split(toy, "val")


# ---- end to end ----------------------------------------------------------------------------

def test_train_and_evaluate_the_preset(lake: Config, fake_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    made: list[tuple[EpisodeSampler, bool]] = []

    def recording(data: ClassDataset, cfg: Config, *, train: bool, seed: int):
        sampler = make_sampler(data, cfg, train=train, seed=seed)
        made.append((sampler, train))
        return sampler

    monkeypatch.setattr(trainer, "make_sampler", recording)  # the held-out sampler
    log_dir = tmp_path / "lake"
    code = cli_main(["train", "--preset", "omniglot_lake", "--data-dir", str(fake_dir),
                     "--log-dir", str(log_dir), "--steps", "2", "--episodes-per-step", "2",
                     "--nproc", "1", "--log-every", "1", "--no-progress",
                     *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((log_dir / "config.json").read_text())
    assert (saved["val_dataset"], saved["test_task_groups"]) == ("omniglot:909-963", "alphabet")
    lines = (log_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert (log_dir / "checkpoints" / "best.pt").is_file()
    [(heldout, is_train)] = made
    assert not is_train and heldout.dataset.name == "omniglot:909-963"
    assert heldout.task_groups == "alphabet"
    assert all(len(a) == 1 for a in alphabets_of(heldout.dataset, heldout.sample(3).classes))
    capsys.readouterr()

    for split, name in [("test", "omniglot:964-1622"), ("val", "omniglot:909-963")]:
        code = cli_main(["evaluate", "--log-dir", str(log_dir), "--split", split, "--tasks",
                         "3", "--batches", "1", "--batch-size", "20", "--json"])
        assert code == 0, capsys.readouterr().err
        record = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert (record["dataset"], record["num_labels"], record["num_tasks"]) == (name, 20, 3)
    # The training alphabets include some of fewer than 20 characters: a clear error.
    assert cli_main(["evaluate", "--log-dir", str(log_dir), "--split", "train", "--tasks",
                     "1", "--batches", "1", "--batch-size", "20"]) == 2
    assert "alphabet Tagalog has 17 characters" in capsys.readouterr().err

    # A checkpoint of an older version (no val_dataset / test_task_groups in its config)
    # loads with the defaults, and may be evaluated with them set.
    state = load_checkpoint(log_dir / "checkpoints" / "best.pt")
    for name in ("val_dataset", "test_task_groups"):
        del state["config"][name]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    _, config, _ = model_from_checkpoint(old)
    assert (config.val_dataset, config.test_task_groups) == ("", "")
    record = evaluate_checkpoint(old, "val", overrides=dict(
        val_dataset="omniglot:909-963", test_task_groups="alphabet", num_task_evals=2,
        num_eval_batches=1, eval_batch_size=20))
    assert record["dataset"] == "omniglot:909-963"
