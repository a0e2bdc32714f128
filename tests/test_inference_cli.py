"""``hypertransformer generate`` and ``hypertransformer predict`` (docs/use.md): the JSON
contract and the error policy (one line ``<prog>: error: ...``, exit 2) on every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_inference import bare_checkpoint

import hypertransformer
from hypertransformer import cli, presets
from hypertransformer.data.framing import frame_ink
from hypertransformer.data.registry import load_split
from hypertransformer.inference import load_classifier
from hypertransformer.model import ContinualHyperTransformer, HyperTransformer
from hypertransformer.training import save_checkpoint
from hypertransformer.training.checkpoint import FORMAT_VERSION

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(samples_cnn=10, default_num_channels=4, num_layerwise_features=4, embedding_dim=8,
            num_layers=1, heads=1, shared_feature_extractor="2-layer", shared_features_dim=8,
            number_of_trained_cnn_layers=0)  # every layer generated (glyphs_demo: logits only)
CLASSES = ["alpha", "beta", "gamma"]



@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 5-way glyphs checkpoint (random weights), a support folder of 3 classes × 2 PNGs
    drawn dark on white, and 4 query PNGs."""
    root = tmp_path_factory.mktemp("cli")
    config = presets.load("glyphs_demo", **TINY)
    torch.manual_seed(0)
    save_checkpoint(root / "run/checkpoints/ckpt-00000001.pt", {
        "format_version": FORMAT_VERSION, "step": 1, "config": config.to_dict(),
        "model": HyperTransformer(config).state_dict(), "optimizer": {}, "scheduler": {},
        "rng": {}, "best_accuracy": None, "episodes_seen": 1, "wall_time": 0.0})
    glyphs = load_split(config, "test").classes
    for c, name in enumerate(CLASSES):
        (root / "support" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(255 - glyphs[c][i, ..., 0]).save(root / "support" / name / f"{i}.png")
    (root / "queries").mkdir()
    for c in range(4):
        Image.fromarray(255 - glyphs[c % 3][5 + c, ..., 0]).save(root / "queries" / f"q{c}.png")
    return {"root": root, "run": root / "run", "support": root / "support",
            "queries": root / "queries"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error(capsys: pytest.CaptureFixture[str], command: str, *argv: str) -> str:
    """The one error line of a failed command (exit 2), without its prefix."""
    code, _, err = run(capsys, command, *argv)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"hypertransformer {command}: error: "), err
    return err.strip().removeprefix(f"hypertransformer {command}: error: ")


def test_generate_then_predict_json(files: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "cnn.pt"
    code, stdout, _ = run(capsys, "generate", "--model", files["run"], "--support",
                          files["support"], "--out", out, "--dtype", "fp32")
    assert code == 0 and out.is_file()
    assert f"wrote {out}: 3 classes (alpha, beta, gamma) from 6 images" in stdout
    queries = sorted(str(p) for p in files["queries"].iterdir())
    code, stdout, _ = run(capsys, "predict", "--model", out, *queries, "--top-k", "2", "--json")
    assert code == 0
    results = json.loads(stdout.splitlines()[-1])
    assert [r["path"] for r in results] == queries
    for r in results:
        assert set(r) == {"path", "label", "probability", "top_k"}
        assert len(r["top_k"]) == 2 and {t["label"] for t in r["top_k"]} <= set(CLASSES)
        assert r["top_k"][0] == {"label": r["label"], "probability": r["probability"]}
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
    # the same as the API: fit on the folder's files, then predict_proba
    support = sorted(files["support"].glob("*/*.png"))
    clf = hypertransformer.load(files["run"], dtype="fp32").fit(support,
                                                                [p.parent.name for p in support])
    proba = clf.predict_proba(queries)
    assert [r["label"] for r in results] == clf.predict(queries)
    assert np.allclose([r["probability"] for r in results], proba.max(1).values, atol=1e-6)
    assert load_classifier(out).predict(queries) == clf.predict(queries)

    code, stdout, _ = run(capsys, "predict", "--model", out, queries[0], "--top-k", "10")
    assert code == 0
    line = stdout.strip()
    assert line.startswith(f"{queries[0]}: {results[0]['label']} (") and "top 3:" in line


def test_generate_tune_steps(files: dict[str, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """--tune-steps K gives fit(..., tune_steps=K); 0 keeps the generated weights, a negative
    count is refused with one error line."""
    support = sorted(files["support"].glob("*/*.png"))
    labels = [p.parent.name for p in support]
    queries = sorted(files["queries"].iterdir())
    ht = hypertransformer.load(files["run"], dtype="fp32")
    for steps in (0, 3):
        out = tmp_path / f"cnn{steps}.pt"
        code, _, _ = run(capsys, "generate", "--model", files["run"], "--support",
                         files["support"], "--out", out, "--dtype", "fp32", "--tune-steps",
                         str(steps))
        assert code == 0
        expected = ht.fit(support, labels, tune_steps=steps)(queries)
        assert torch.allclose(load_classifier(out)(queries), expected, atol=1e-5)
    assert not torch.allclose(load_classifier(tmp_path / "cnn0.pt")(queries),
                              load_classifier(tmp_path / "cnn3.pt")(queries), atol=1e-4)
    code, _, err = run(capsys, "generate", "--model", files["run"], "--support",
                       files["support"], "--out", tmp_path / "x.pt", "--tune-steps", "-1")
    assert code == 2 and "tune_steps must be 0 or more" in err


def test_generate_with_unlabeled_images(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """--unlabeled DIR2 gives fit(..., unlabeled=DIR2's images) of a semi-supervised model;
    a supervised model and a missing folder are refused with one error line."""
    config = presets.load("glyphs_demo", **TINY, unlabeled_samples_per_class=2)
    torch.manual_seed(1)
    semi = bare_checkpoint(tmp_path / "semi.pt", HyperTransformer(config), config)
    out = tmp_path / "cnn.pt"
    code, printed, _ = run(capsys, "generate", "--model", semi, "--support", files["support"],
                           "--unlabeled", files["queries"], "--out", out, "--dtype", "fp32")
    assert code == 0 and "from 6 images and 4 unlabelled" in printed
    queries = sorted(files["queries"].iterdir())
    support = sorted(p for d in sorted(files["support"].iterdir()) for p in d.iterdir())
    labels = [p.parent.name for p in support]
    expected = hypertransformer.load(semi, dtype="fp32").fit(support, labels,
                                                             unlabeled=queries)
    assert torch.allclose(load_classifier(out)(queries), expected(queries), atol=1e-5)
    code, _, err = run(capsys, "generate", "--model", files["run"], "--support",
                       files["support"], "--unlabeled", files["queries"], "--out", out)
    assert code == 2 and "trained without unlabelled support samples" in err
    code, _, err = run(capsys, "generate", "--model", semi, "--support", files["support"],
                       "--unlabeled", tmp_path / "nowhere", "--out", out)
    assert code == 2 and "unlabelled folder" in err and "does not exist" in err


def test_generate_onnx(files: dict[str, Path], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    code, stdout, _ = run(capsys, "generate", "--model", files["run"], "--support",
                          files["support"], "--out", tmp_path / "cnn.onnx")
    assert code == 0 and (tmp_path / "cnn.onnx").is_file() and "predict" not in stdout
    assert "predict reads the TorchScript .pt" in error(
        capsys, "predict", "--model", tmp_path / "cnn.onnx", files["queries"] / "q0.png")


def test_generate_errors(files: dict[str, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    def generate(support: Path, model: Path | str = files["run"], out: str = "cnn.pt") -> str:
        return error(capsys, "generate", "--model", model, "--support", support,
                     "--out", tmp_path / out)

    folder = tmp_path / "support"
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        for f in (files["support"] / name).iterdir():
            (folder / name / f.name).write_bytes(f.read_bytes())
    (folder / "delta").mkdir()
    assert generate(folder) == (f"class folder {folder / 'delta'} is empty; add images of "
                                f"the class or remove the folder")
    (folder / "delta" / "notes.txt").write_text("hello")
    assert generate(folder).startswith(f"cannot read image {folder / 'delta' / 'notes.txt'}: ")
    (folder / "delta" / "notes.txt").unlink()
    for name in ("delta", "epsilon", "zeta"):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "0.png").write_bytes((folder / "alpha" / "0.png").read_bytes())
    assert generate(folder).startswith("6 classes, but this model tells at most 5 apart")
    assert "does not exist" in generate(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "has no class sub-folders" in generate(tmp_path / "empty")
    assert "use a .pt (TorchScript) or .onnx" in generate(files["support"], out="cnn.txt")
    assert "'omniglot_2shot' is neither a pretrained model" in generate(
        files["support"], model="omniglot_2shot")
    # a continual model learns task after task (Stream) and fits no classifier
    assert generate(files["support"], model="cht_omniglot_class").startswith(
        "'cht_omniglot_class' is a continual model")
    config = presets.load("cht_glyphs_demo", **TINY)
    cht = bare_checkpoint(tmp_path / "cht.pt", ContinualHyperTransformer(config), config)
    assert generate(files["support"], model=cht).startswith(
        f"{cht} holds a 'cht' model, which learns task after task")
    assert not (tmp_path / "cnn.pt").exists()


def test_predict_errors(files: dict[str, Path], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cnn.pt"
    assert run(capsys, "generate", "--model", files["run"], "--support", files["support"],
               "--out", out)[0] == 0
    query = files["queries"] / "q0.png"
    missing = tmp_path / "missing.png"
    assert error(capsys, "predict", "--model", out, query, missing).startswith(
        f"cannot read image {missing}: ")
    assert "not a TorchScript classifier" in error(capsys, "predict", "--model",
                                                   files["run"] / "checkpoints/ckpt-00000001.pt",
                                                   query)
    assert "does not exist" in error(capsys, "predict", "--model", tmp_path / "no.pt", query)
    assert error(capsys, "predict", "--model", out, query, "--top-k", "0") == (
        "--top-k must be at least 1; got 0")


def test_generate_with_frame(files: dict[str, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """--frame gives fit(..., frame=True): support and later queries framed on their ink
    (the saved classifier keeps it); a natural-image model refuses frame."""
    out = tmp_path / "framed.pt"
    code, _, _ = run(capsys, "generate", "--model", files["run"], "--support", files["support"],
                     "--out", out, "--frame", "--dtype", "fp32")
    assert code == 0
    queries = sorted(files["queries"].iterdir())
    support = sorted(p for d in sorted(files["support"].iterdir()) for p in d.iterdir())
    labels = [p.parent.name for p in support]
    ht = hypertransformer.load(files["run"], dtype="fp32")
    framed = ht.fit(support, labels, frame=True)
    plain = ht.fit(support, labels)
    assert framed.preprocessing.frame_ink and not plain.preprocessing.frame_ink
    assert torch.allclose(load_classifier(out)(queries), framed(queries), atol=1e-5)
    assert not torch.allclose(framed(queries), plain(queries), atol=1e-3)
    manual = framed.preprocessing(queries)  # what the classifier's CNN sees
    unframed = plain.preprocessing(queries)
    pixels = ((unframed + 1) * 128).round().clamp(0, 255).to(torch.uint8)
    expected = torch.from_numpy(frame_ink(pixels.permute(0, 2, 3, 1).numpy()))
    assert torch.equal(manual, expected.permute(0, 3, 1, 2).float() / 128 - 1)
    natural = presets.load("miniimagenet_1shot", **TINY, image_size=16)
    model = bare_checkpoint(tmp_path / "mini.pt", HyperTransformer(natural), natural)
    with pytest.raises(ValueError, match="frame applies to models of ink drawings"):
        hypertransformer.load(model, dtype="fp32").fit(support, labels, frame=True)
