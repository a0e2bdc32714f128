"""The HyperTransformer on a user's own images (hypertransformer.inference, docs/use.md):
load, fit, classify, export, and every bad input.  Tiny glyphs_demo models, built-in data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from realdata import omniglot_dir

import hypertransformer
from hypertransformer import presets
from hypertransformer.config import Config
from hypertransformer.data.base import DatasetError
from hypertransformer.data.omniglot import load_omniglot
from hypertransformer.data.registry import load_split
from hypertransformer.inference import (
    ContinualModel,
    FewShotModel,
    GeneratedCNN,
    Preprocessing,
    load_classifier,
    load_few_shot,
    pretrained,
)
from hypertransformer.inference.classifier import TUNE_STEPS, mean_weights, shot_groups
from hypertransformer.model import ContinualHyperTransformer, HyperTransformer, ProtoNet
from hypertransformer.training import save_checkpoint, train
from hypertransformer.training.checkpoint import FORMAT_VERSION, CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

# A tiny 5-way 1-shot glyphs model (as in test_cli_errors.py).
TINY = dict(samples_cnn=10, default_num_channels=4, num_layerwise_features=4, embedding_dim=8,
            num_layers=1, heads=1, shared_feature_extractor="2-layer", shared_features_dim=8,
            number_of_trained_cnn_layers=0)  # every layer generated (glyphs_demo: logits only)


def tiny_config(**overrides: object):  # noqa: ANN201
    return presets.load("glyphs_demo", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def ht() -> FewShotModel:
    """fp32, whatever the host: these tests compare code paths exactly (bf16 against fp32:
    test_precision.py)."""
    torch.manual_seed(0)
    return FewShotModel(HyperTransformer(tiny_config()), dtype="fp32")


@pytest.fixture(scope="module")
def glyphs() -> list[np.ndarray]:
    """Classes of the glyphs test split: uint8 [20, 28, 28, 1] each, light ink on dark."""
    return load_split(tiny_config(), "test").classes[:8]


def support(glyphs: list[np.ndarray], classes: int, shots: int) -> tuple[list, list[str]]:
    images = [glyphs[c][i, ..., 0] for c in range(classes) for i in range(shots)]
    return images, [f"class {c}" for c in range(classes) for _ in range(shots)]


def queries(glyphs: list[np.ndarray], classes: int) -> list[np.ndarray]:
    return [glyphs[c][i, ..., 0] for c in range(classes) for i in range(10, 14)]


# ---- fit and classify --------------------------------------------------------------------

def test_fit_predict_shapes(ht: FewShotModel, glyphs: list[np.ndarray]) -> None:
    images, labels = support(glyphs, 5, 2)
    clf = ht.fit(images, labels)
    assert isinstance(clf, torch.nn.Module) and clf.class_names == sorted(set(labels))
    assert not list(clf.parameters())  # the generated weights are buffers
    logits = clf(queries(glyphs, 5))
    assert logits.shape == (20, 5)
    proba = clf.predict_proba(queries(glyphs, 5))
    assert torch.allclose(proba.sum(1), torch.ones(20))
    assert clf.predict(queries(glyphs, 5)) == [labels[0::2][i] for i in logits.argmax(1)]


def test_support_pass_equals_the_models_classify(ht: FewShotModel,
                                                 glyphs: list[np.ndarray]) -> None:
    """The stored statistics are those of the support pass: on the support set itself the
    generated CNN gives the model's own classify (batch statistics of that set), float64."""
    model = HyperTransformer(tiny_config()).double().eval()
    images, _ = support(glyphs, 5, 2)
    x = ht.preprocessing(images).double()
    y = torch.arange(5).repeat_interleave(2)
    with torch.no_grad():
        weights = model.generate(x[None], y[None])
        cnn = GeneratedCNN.from_generated(model, weights, 5)
        cnn.fit_statistics(x)
        expected = model.classify(x[None], weights)[0]
        assert torch.allclose(cnn(x), expected, atol=1e-10, rtol=0)


def test_prediction_does_not_depend_on_the_other_images(ht: FewShotModel,
                                                        glyphs: list[np.ndarray]) -> None:
    clf = ht.fit(*support(glyphs, 5, 1))
    batch = queries(glyphs, 5)
    together = clf(batch)
    alone = torch.cat([clf([image]) for image in batch])
    assert torch.allclose(together, alone, atol=1e-5, rtol=0)
    assert torch.allclose(clf(batch[3:7]), together[3:7], atol=1e-5, rtol=0)


def test_fewer_classes_drop_the_unused_logits(ht: FewShotModel,
                                              glyphs: list[np.ndarray]) -> None:
    """N' = 3 of N = 5: labels 0-2 carry the support, labels 3 and 4 have no sample; the
    classifier keeps the logits of the 3 used labels, unchanged."""
    images, _ = support(glyphs, 3, 1)
    names = [7, ("a", 1), "z"]  # any hashable class names, in order of first appearance
    clf = ht.fit(images, names, tune_steps=0)
    assert clf.class_names == names
    x = ht.preprocessing(images)
    with torch.no_grad():
        weights = ht.model.generate(x[None], torch.arange(3)[None])
        full = GeneratedCNN.from_generated(ht.model, weights, 5)
        full.fit_statistics(x)
    q = queries(glyphs, 5)
    logits = clf(q)
    assert logits.shape == (20, 3)
    assert torch.allclose(logits, full(ht.preprocessing(q))[:, :3], atol=1e-6, rtol=0)
    assert set(clf.predict(q)) <= {7, ("a", 1), "z"}


def test_unlabeled_images_enter_as_the_unlabelled_token(glyphs: list[np.ndarray]) -> None:
    """fit(..., unlabeled=U) of a semi-supervised model generates from the labelled images and
    U labelled N (the unlabelled token) and takes the support statistics over both, as in
    training; an empty U is no U; a supervised model refuses U."""
    torch.manual_seed(0)
    semi = FewShotModel(HyperTransformer(tiny_config(unlabeled_samples_per_class=2)),
                        dtype="fp32")
    images, labels = support(glyphs, 5, 1)
    extra = [glyphs[c][i, ..., 0] for c in range(5) for i in (1, 2)]
    x = semi.preprocessing(images + extra)
    y = torch.cat([torch.arange(5), torch.full((10,), 5)])
    with torch.no_grad():
        weights = semi.model.generate(x[None], y[None])
        cnn = GeneratedCNN.from_generated(semi.model, weights, 5)
        cnn.fit_statistics(x)
    q = queries(glyphs, 5)
    clf = semi.fit(images, labels, unlabeled=extra, tune_steps=0)
    assert torch.allclose(clf(q), cnn(semi.preprocessing(q)), atol=1e-6, rtol=0)
    assert not torch.allclose(clf(q), semi.fit(images, labels, tune_steps=0)(q), atol=1e-3)
    assert torch.equal(semi.fit(images, labels, unlabeled=[])(q), semi.fit(images, labels)(q))
    # unlabelled images: in the statistics only
    tuned = semi.fit(images, labels, unlabeled=extra, tune_steps=TUNE_STEPS)
    assert tuned(q).isfinite().all() and not torch.allclose(tuned(q), clf(q), atol=1e-3)
    supervised = FewShotModel(HyperTransformer(tiny_config()), dtype="fp32")
    with pytest.raises(ValueError, match="trained without unlabelled support samples"):
        supervised.fit(images, labels, unlabeled=extra)


def test_more_shots_than_trained_are_dealt_into_groups() -> None:
    """shot_groups: one group up to the trained shots; beyond, image i of a class to group
    i mod G, classes with fewer images lend one again, unlabelled ones are dealt too."""
    y = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3])  # N = 3: label 3 is unlabelled
    groups = shot_groups(y, 3, 2)
    assert [g.tolist() for g in groups] == [[0, 3, 4, 7, 9], [1, 3, 5, 8, 10], [2, 3, 6]]
    assert [g.tolist() for g in shot_groups(y, 3, 5)] == [list(range(11))]


def test_fit_averages_the_weights_of_the_groups(ht: FewShotModel,
                                                glyphs: list[np.ndarray]) -> None:
    """3 shots for a 1-shot model: the CNN's weights are the mean of three generations, one
    per group, its BatchNorm statistics those of all 15 images (docs/use.md)."""
    assert ht.config.shots == 1
    images, labels = support(glyphs, 5, 3)
    x = ht.preprocessing(images)
    y = torch.arange(5).repeat_interleave(3)
    with torch.no_grad():
        each = [ht.model.generate(x[g::3][None], y[g::3][None]) for g in range(3)]
        cnn = GeneratedCNN.from_generated(ht.model, mean_weights(each), 5)
        cnn.fit_statistics(x)
        single = GeneratedCNN.from_generated(ht.model, each[0], 5)
    assert torch.allclose(cnn.logits_weight, torch.stack([
        GeneratedCNN.from_generated(ht.model, w, 5).logits_weight for w in each]).mean(0))
    assert not torch.allclose(cnn.logits_weight, single.logits_weight)
    q = queries(glyphs, 5)
    assert torch.allclose(ht.fit(images, labels, tune_steps=0)(q), cnn(ht.preprocessing(q)),
                          atol=1e-3, rtol=0)


def test_tuning_fits_the_support_set(ht: FewShotModel, glyphs: list[np.ndarray]) -> None:
    """fit's fine-tuning (tune_steps) lowers the support set's loss from where the generated
    weights leave it, with the support statistics stored after it; 0 steps keep the generated
    CNN; by default TUNE_STEPS when a class has two or more images, 0 with one image a class;
    a negative count is refused."""
    images, labels = support(glyphs, 5, 1)
    y = torch.arange(5)
    x = ht.preprocessing(images)
    with torch.no_grad():
        cnn = GeneratedCNN.from_generated(ht.model, ht.model.generate(x[None], y[None]), 5)
        cnn.fit_statistics(x)
    generated = ht.fit(images, labels, tune_steps=0)
    assert torch.equal(generated.cnn.logits_weight, cnn.logits_weight)
    assert torch.equal(ht.fit(images, labels).cnn.logits_weight, cnn.logits_weight)
    tuned = ht.fit(images, labels, tune_steps=TUNE_STEPS)
    assert TUNE_STEPS > 0 and tuned.cnn.logits_weight.requires_grad is False
    loss = {name: F.cross_entropy(clf(images), y).item()
            for name, clf in (("generated", generated), ("tuned", tuned))}
    assert loss["tuned"] < 0.5 * loss["generated"], loss
    statistics = [(m.clone(), v.clone()) for m, v in tuned.cnn.statistics()]
    tuned.cnn.fit_statistics(x)  # already the support set's
    for (m, v), (m2, v2) in zip(statistics, tuned.cnn.statistics(), strict=True):
        assert torch.allclose(m, m2, atol=1e-6) and torch.allclose(v, v2, atol=1e-6)
    assert not list(tuned.parameters())
    two, names = support(glyphs, 5, 2)
    two[-1], names[-1] = two[0], names[0]  # class 4: one image; class 0: three
    q = queries(glyphs, 5)
    assert torch.equal(ht.fit(two, names)(q), ht.fit(two, names, tune_steps=TUNE_STEPS)(q))
    with pytest.raises(ValueError, match="tune_steps must be 0 or more"):
        ht.fit(images, labels, tune_steps=-1)


def test_shots_may_differ_per_class(ht: FewShotModel, glyphs: list[np.ndarray]) -> None:
    images = [glyphs[0][i, ..., 0] for i in range(4)] + [glyphs[1][0, ..., 0]]
    clf = ht.fit(images, ["a"] * 4 + ["b"])
    assert clf(queries(glyphs, 2)).shape == (8, 2)


def test_labels_as_a_tensor(ht: FewShotModel, glyphs: list[np.ndarray]) -> None:
    images, _ = support(glyphs, 3, 1)
    batch = torch.from_numpy(np.stack(images))[:, None]  # uint8 [3, 1, 28, 28]
    clf = ht.fit(batch, torch.tensor([4, 2, 4]))
    assert clf.class_names == [4, 2]


# ---- images of any kind --------------------------------------------------------------------

def test_input_types_give_the_same_result(ht: FewShotModel, glyphs: list[np.ndarray],
                                          tmp_path: Path) -> None:
    clf = ht.fit(*support(glyphs, 5, 1))
    pixels = [glyphs[c][15, ..., 0] for c in range(5)]
    paths = []
    for i, p in enumerate(pixels):
        paths.append(tmp_path / f"q{i}.png")
        Image.fromarray(p).save(paths[-1])
    as_types = {
        "path": [str(p) for p in paths],
        "Path": paths,
        "PIL": [Image.open(p) for p in paths],
        "uint8 array": pixels,
        "[H, W, 1] array": [p[..., None] for p in pixels],
        "uint8 tensor": [torch.from_numpy(p)[None] for p in pixels],
        "float tensor in [0, 1]": [torch.from_numpy(p)[None].float() / 255 for p in pixels],
        "4-d array": np.stack(pixels)[..., None],
        "4-d tensor": torch.from_numpy(np.stack(pixels))[:, None],
        "RGB PIL": [Image.fromarray(p).convert("RGB") for p in pixels],
        "RGBA array": [np.dstack([p, p, p, np.full_like(p, 255)]) for p in pixels],
    }
    reference = clf(as_types["path"])
    for kind, images in as_types.items():
        assert torch.equal(clf(images), reference), kind


def test_any_size_is_resized(ht: FewShotModel, glyphs: list[np.ndarray]) -> None:
    big = Image.fromarray(glyphs[0][0, ..., 0]).resize((112, 84), Image.NEAREST)
    x = ht.preprocessing([big, np.asarray(big)])
    assert x.shape == (2, 1, 28, 28) and torch.equal(x[0], x[1])
    assert x.min() >= -1 and x.max() < 1


def test_ink_polarity(ht: FewShotModel, glyphs: list[np.ndarray]) -> None:
    light = [glyphs[c][0, ..., 0] for c in range(4)]  # light ink on black, as trained
    dark = [255 - p for p in light]  # dark ink on a white page
    prep = ht.preprocessing
    assert prep.ink_high
    assert torch.equal(prep(dark), prep(light))  # auto: inverted by its light border
    assert torch.equal(prep(dark, "dark"), prep(light, "light"))
    assert torch.equal(prep(light, "dark"), prep(dark, "light"))
    assert not torch.equal(prep(light, "dark"), prep(light))
    mixed = prep([light[0], dark[1]])
    assert torch.equal(mixed, prep([light[0], light[1]]))
    clf = ht.fit(dark, list("abcd"))
    assert torch.equal(clf(light), ht.fit(light, list("abcd"))(light))
    clf.ink = "light"  # the classifier's default for queries
    assert torch.equal(clf(light), clf(dark, "dark"))


def test_omniglot_pngs_give_the_training_pixels(tmp_path: Path) -> None:
    """The 20 official PNGs of Omniglot class 0 (black on white, 105 px), read as files with
    ink="auto", are bit for bit the training data of the loader (inverted, resized)."""
    root = omniglot_dir()
    with zipfile.ZipFile(root / "images_background.zip") as archive:
        members = sorted(m for m in archive.namelist()
                         if "/Arcadian/character01/" in m and m.endswith(".png"))
        paths = []
        for m in members:
            paths.append(tmp_path / Path(m).name)
            paths[-1].write_bytes(archive.read(m))
    prep = Preprocessing.from_config(presets.load("omniglot_1shot"))
    expected = torch.from_numpy(load_omniglot(root).classes[0]).permute(0, 3, 1, 2) / 128 - 1
    assert len(paths) == 20 and torch.equal(prep(paths), expected)


def test_natural_image_models_keep_the_pixels() -> None:
    config = presets.load("miniimagenet_1shot")
    prep = Preprocessing.from_config(config)
    assert (prep.image_size, prep.channels, prep.ink_high) == (84, 3, False)
    page = np.full((84, 84, 3), 250, np.uint8)
    assert torch.allclose(prep([page]), torch.full((1, 3, 84, 84), 250 / 128 - 1))


# ---- bad input --------------------------------------------------------------------------

def test_bad_input_is_refused_clearly(ht: FewShotModel, glyphs: list[np.ndarray],
                                      tmp_path: Path) -> None:
    images, labels = support(glyphs, 5, 1)
    six = images + [glyphs[5][0, ..., 0]]
    with pytest.raises(ValueError, match="6 classes, but this model tells at most 5 apart"):
        ht.fit(six, labels + ["six"])
    with pytest.raises(ValueError, match="no images given"):
        ht.fit([], [])
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        ht.fit(images, labels[:4])
    with pytest.raises(ValueError, match="ink must be one of auto, light, dark"):
        ht.fit(images, labels, ink="white")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {text}")):
        ht.fit([*images[:4], text], labels)
    missing = tmp_path / "missing.png"
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {missing}")):
        ht.fit([*images[:4], missing], labels)
    clf = ht.fit(images, labels)
    with pytest.raises(DatasetError, match="image 1 has shape \\[28, 28, 2\\]"):
        clf([images[0], np.zeros((28, 28, 2), np.uint8)])
    with pytest.raises(DatasetError, match="image 0 is a int"):
        clf([3])
    with pytest.raises(DatasetError, match="integer pixels must be in 0..255"):
        clf([np.full((28, 28), 300)])
    with pytest.raises(DatasetError, match="4-d"):
        clf(np.zeros((28, 28), np.uint8))


# ---- load -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The log dir of a real training run: a tiny glyphs_demo model, 4 steps."""
    log_dir = tmp_path_factory.mktemp("run")
    train(tiny_config(train_steps=4, steps_between_saves=2, episodes_per_step=2), log_dir,
          progress=False, log_every=2, heldout_episodes=2)
    return log_dir


def test_load_what_train_wrote(trained: Path, glyphs: list[np.ndarray]) -> None:
    checkpoints = trained / "checkpoints"
    results = []
    for where in (trained, str(trained), checkpoints / "ckpt-00000004.pt",
                  checkpoints / "best.pt"):
        ht = hypertransformer.load(where)
        assert isinstance(ht.model, HyperTransformer) and not ht.model.training
        results.append(ht.fit(*support(glyphs, 3, 1))(queries(glyphs, 3)))
    assert torch.equal(results[0], results[2])  # the log dir means its latest checkpoint


def test_pretrained_names(trained: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="'glyphs_demo' is not shipped with this "
                                                "version yet .*shipped: none yet"):
        hypertransformer.load("glyphs_demo")
    (tmp_path / "glyphs_demo.pt").write_bytes((trained / "checkpoints/best.pt").read_bytes())
    assert pretrained.available_pretrained() == ["glyphs_demo"]
    assert isinstance(hypertransformer.load("glyphs_demo").model, HyperTransformer)
    with pytest.raises(FileNotFoundError, match="'omniglot_1shot' is not shipped .*shipped: "
                                                "glyphs_demo"):
        hypertransformer.load("omniglot_1shot")
    with pytest.raises(ValueError, match="'omniglot_2shot' is neither a pretrained model nor "
                                         "an existing checkpoint .*omniglot_1shot, "
                                         "omniglot_5shot, omniglot_1shot_semi, "
                                         "drawings_1shot, glyphs_demo, "
                                         "cht_omniglot_task, "
                                         "cht_omniglot_class, constpn_omniglot .shipped: "
                                         "glyphs_demo"):
        hypertransformer.load("omniglot_2shot")
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a log dir"):
        hypertransformer.load(tmp_path / "runs" / "missing")


def bare_checkpoint(path: Path, model: torch.nn.Module, config: Config) -> Path:
    """A checkpoint as the trainer writes it (training state left empty)."""
    save_checkpoint(path, {"format_version": FORMAT_VERSION, "step": 1,
                           "config": config.to_dict(), "model": model.state_dict(),
                           "optimizer": {}, "scheduler": {}, "rng": {}, "best_accuracy": None,
                           "episodes_seen": 1, "wall_time": 0.0})
    return path


@pytest.mark.parametrize("preset,cls", [("cht_glyphs_demo", ContinualHyperTransformer),
                                        ("protonet_omniglot_continual", ProtoNet)])
def test_continual_models_do_not_fit_classifiers(preset: str, cls: type,
                                                 tmp_path: Path) -> None:
    """They load as models that learn task after task (tests/test_stream.py); what needs a
    HyperTransformer refuses them."""
    config = presets.load(preset, **TINY)
    path = bare_checkpoint(tmp_path / "other.pt", cls(config), config)
    assert isinstance(hypertransformer.load(path), ContinualModel)
    with pytest.raises(ValueError, match=f"holds a '{config.model_type}' model, which learns "
                                         f"task after task .*needs a HyperTransformer"):
        load_few_shot(path)


class Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_a_malicious_pickle_is_refused(tmp_path: Path) -> None:
    config = tiny_config()
    path = bare_checkpoint(tmp_path / "evil.pt", HyperTransformer(config), config)
    state = torch.load(path, weights_only=True)
    marker = tmp_path / "pwned"
    state["config"]["seed"] = Payload(marker)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        hypertransformer.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: full unpickling runs it
    assert marker.exists()


# ---- export -----------------------------------------------------------------------------

def test_torchscript_roundtrip(ht: FewShotModel, glyphs: list[np.ndarray],
                               tmp_path: Path) -> None:
    clf = ht.fit(*support(glyphs, 4, 1))
    clf.save(tmp_path / "cnn.pt")
    loaded = load_classifier(tmp_path / "cnn.pt")
    q = queries(glyphs, 4)
    assert loaded.class_names == clf.class_names and loaded.preprocessing == clf.preprocessing
    assert torch.allclose(loaded(q), clf(q), atol=1e-5, rtol=0)
    assert loaded.predict(q) == clf.predict(q)
    assert torch.allclose(loaded(q[:1]), clf(q[:1]), atol=1e-5, rtol=0)  # a batch of one
    traced_only = torch.jit.trace(clf.cnn, clf.preprocessing(q))
    torch.jit.save(traced_only, str(tmp_path / "bare.pt"))
    with pytest.raises(ValueError, match="without the class names and preprocessing"):
        load_classifier(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="use a .pt .TorchScript. or .onnx file name"):
        clf.save(tmp_path / "cnn.pth")
    with pytest.raises(ValueError, match="class name .* cannot be saved"):
        ht.fit(*support(glyphs, 2, 1)[:1], [("a", 1), "b"]).save(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a TorchScript classifier"):
        load_classifier(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classifier(tmp_path / "missing.pt")


NO_IMPORT_SCRIPT = """
import importlib.util, json, sys
sys.path.append(sys.argv[1])  # torch's site-packages, without its .pth files
assert importlib.util.find_spec("hypertransformer") is None, "hypertransformer importable"
import torch
import torch.nn.functional as F
extra = {"hypertransformer.json": ""}
cnn = torch.jit.load(sys.argv[2], _extra_files=extra)
x = torch.load(sys.argv[3])
print(json.dumps({"logits": cnn(x).tolist(), "meta": json.loads(extra["hypertransformer.json"])}))
"""


def test_torchscript_runs_without_hypertransformer(ht: FewShotModel, glyphs: list[np.ndarray],
                                                   tmp_path: Path) -> None:
    clf = ht.fit(*support(glyphs, 5, 1))
    clf.save(tmp_path / "cnn.pt")
    x = clf.preprocessing(queries(glyphs, 5))
    torch.save(x, tmp_path / "x.pt")
    site = str(Path(torch.__file__).resolve().parents[1])
    # -S: no site module, so no .pth file (the editable install's) puts the project on the path
    proc = subprocess.run([sys.executable, "-S", "-c", NO_IMPORT_SCRIPT, site,
                           str(tmp_path / "cnn.pt"), str(tmp_path / "x.pt")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert torch.allclose(torch.tensor(out["logits"]), clf.cnn(x), atol=1e-5, rtol=0)
    assert out["meta"]["class_names"] == clf.class_names
    assert out["meta"]["preprocessing"] == {"image_size": 28, "channels": 1, "ink_high": True,
                                            "frame_ink": False, "normalization": "x / 128 - 1"}


def test_onnx_export(ht: FewShotModel, glyphs: list[np.ndarray], tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    clf = ht.fit(*support(glyphs, 5, 1))
    clf.save(tmp_path / "cnn.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.onnx"]  # one file
    session = ort.InferenceSession(str(tmp_path / "cnn.onnx"))
    x = clf.preprocessing(queries(glyphs, 5))
    for batch in (x, x[:1]):
        (logits,) = session.run(None, {"images": batch.numpy()})
        assert np.allclose(logits, clf.cnn(batch).numpy(), atol=1e-5, rtol=0)
    meta = json.loads(session.get_modelmeta().custom_metadata_map["hypertransformer"])
    assert meta["class_names"] == clf.class_names and meta["ink"] == "auto"


@pytest.mark.parametrize("name,shots,floor", [("omniglot_1shot", 1, 0.8),  # 86.5 % in full
                                               ("omniglot_5shot", 5, 0.87),  # 91.7 %
                                               ("omniglot_1shot_semi", 1, 0.8),  # 85.4 %
                                               ("drawings_1shot", 1, 0.8)])  # 84.8 %
def test_the_shipped_omniglot_models_classify_omniglot_test_tasks(name: str, shots: int,
                                                                  floor: float) -> None:
    """The package's Omniglot models (docs/results.md) on 32 test tasks of the real data;
    the floors sit a few points below their full-protocol accuracies (chance: 5 %)."""
    from realdata import omniglot_dir

    from hypertransformer.data.registry import load_split
    from hypertransformer.evaluation.evaluator import evaluate_model

    assert name in pretrained.available_pretrained()
    ht = hypertransformer.load(name)
    config = ht.model.config.replace(data_dir=str(omniglot_dir()))
    assert (config.num_labels, config.shots, config.default_num_channels) == (20, shots, 8)
    result = evaluate_model(ht.model, config, load_split(config, "test"), num_tasks=32,
                            num_batches=1, batch_size=100)
    assert result.accuracy > floor
