"""``hypertransformer serve`` (docs/use.md): the JSON API through Flask's test client (every
bad request, then a good one; sessions; expiry; start-up errors), and the page in a real
browser: Debian's Chromium driven by Playwright against a server started as a command.

Flask, Playwright and Chromium come with the README's test command; a missing one skips these
tests on a developer's machine and fails them in CI (``CI`` set)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import test_inference_cli
import torch

import hypertransformer
from hypertransformer import cli
from hypertransformer.inference import load_classifier, pretrained
from hypertransformer.inference.cli import support_folder

pytestmark = pytest.mark.usefixtures("one_thread")

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_roundtrip.py"
Files = dict[str, Path]
# The fixture of a tiny 5-way glyphs model (random weights) with PNGs of CLASSES and queries.
files = test_inference_cli.files
CLASSES = test_inference_cli.CLASSES


def missing(what: str) -> None:
    reason = f"{what} is not installed; the README's test command installs it"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)



@pytest.fixture(scope="module")
def serve() -> ModuleType:
    if importlib.util.find_spec("flask") is None:
        missing("flask (the serve extra)")
    from hypertransformer.inference import serve
    return serve


@pytest.fixture(scope="module")
def client(serve: ModuleType, files: Files) -> Any:
    """The app of the tiny 5-way model, with small limits: 3 pictures per class, 64 KiB per
    request, the 3 most recent classifiers kept."""
    app = serve.create_app(hypertransformer.load(files["run"], dtype="fp32"), "tiny", keep=3,
                           max_upload_bytes=2**16, max_images_per_class=3)
    return app.test_client()


def upload(source: Path | bytes, name: str | None = None) -> tuple[BytesIO, str]:
    if isinstance(source, Path):
        return BytesIO(source.read_bytes()), name or source.name
    return BytesIO(source), name or "upload.png"


def support(files: Files, **extra: list[Path | bytes]) -> dict[str, list[Path | bytes]]:
    """The support folder's classes (alpha, beta, gamma: 2 PNGs each), then ``extra``."""
    paths, labels = support_folder(files["support"])
    classes: dict[str, list[Path | bytes]] = {}
    for path, label in zip(paths, labels, strict=True):
        classes.setdefault(label, []).append(path)
    return {**classes, **extra}


def generate(client: Any, classes: dict[str, list[Path | bytes]]) -> Any:
    data: dict[str, Any] = {"name": list(classes)}
    for i, sources in enumerate(classes.values()):
        data[f"class-{i}"] = [upload(s) for s in sources]
    return client.post("/api/generate", data=data, content_type="multipart/form-data")


def classify(client: Any, token: str, query: Path | bytes | None) -> Any:
    data: dict[str, Any] = {"token": token}
    if query is not None:
        data["image"] = upload(query)
    return client.post("/api/classify", data=data, content_type="multipart/form-data")


# ---- the API --------------------------------------------------------------------------------

def test_page_and_info(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert 'id="generate"' in page.text and "/api/generate" in page.text
    assert client.get("/api/info").get_json() == {
        "model": "tiny", "num_labels": 5, "image_size": 28, "channels": 1,
        "max_images_per_class": 3, "max_upload_bytes": 2**16}


def test_generate_classify_download(client: Any, files: Files, tmp_path: Path) -> None:
    """The page's classifier is ``ht.fit`` of the uploads: the same probabilities; the
    download is that CNN with its class names."""
    answer = generate(client, support(files)).get_json()
    assert answer["classes"] == CLASSES and answer["images"] == 6
    expected = hypertransformer.load(files["run"], dtype="fp32").fit(
        *support_folder(files["support"]))
    tensors = list(expected.buffers())
    assert answer["weights"] == sum(t.numel() for t in tensors)
    assert answer["bytes"] == 4 * answer["weights"] and answer["generate_ms"] > 0
    queries = sorted(files["queries"].iterdir())
    for query in queries:
        result = classify(client, answer["token"], query).get_json()
        want = expected.predict_proba([query])[0]
        assert result["classes"] == CLASSES
        assert torch.allclose(torch.tensor(result["probabilities"]), want, atol=1e-6)
        assert result["label"] == CLASSES[int(want.argmax())] and result["classify_ms"] > 0
    download = client.get(answer["download"])
    assert download.status_code == 200
    assert 'filename=cnn.pt' in download.headers["Content-Disposition"]
    (tmp_path / "cnn.pt").write_bytes(download.data)
    saved = load_classifier(tmp_path / "cnn.pt")
    assert saved.class_names == CLASSES
    assert torch.allclose(saved.predict_proba(queries), expected.predict_proba(queries),
                          atol=1e-5)


NOT_AN_IMAGE = b"class notes, not a picture"
BAD_REQUESTS: dict[str, tuple[Callable[[Any, Files], Any], int, str]] = {
    "not an image": (lambda c, f: generate(c, support(f, delta=[NOT_AN_IMAGE])), 400,
                     "cannot read image upload.png (class 'delta'): not in an image format"),
    "too large": (lambda c, f: generate(c, support(f, delta=[bytes(2**16)])), 413,
                  "the upload is larger than 0.0625 MB, the limit of one request"),
    "too many pictures": (lambda c, f: generate(c, support(f, delta=[f["queries"] / "q0.png"]
                                                           * 4)), 400,
                          "class 'delta' has 4 pictures; the limit is 3 per class"),
    "too many classes": (lambda c, f: generate(c, support(f, **{
        str(i): [f["queries"] / "q0.png"] for i in range(3)})), 400,
        "6 classes, but this model tells at most 5 apart"),
    "empty class": (lambda c, f: generate(c, support(f, delta=[])), 400,
                    "class 'delta' has no pictures; draw or upload at least one"),
    "unnamed class": (lambda c, f: generate(c, support(f, **{" ": [f["queries"] / "q0.png"]})),
                      400, "class 4 has no name"),
    "same names": (lambda c, f: generate(c, {"a": [f["queries"] / "q0.png"],
                                             " a ": [f["queries"] / "q1.png"]}),
                   400, "two classes are named 'a'"),
    "no classes": (lambda c, f: generate(c, {}), 400, "no classes"),
    "no query": (lambda c, f: classify(c, good(c, f), None), 400, "no query picture"),
    "query not an image": (lambda c, f: classify(c, good(c, f), NOT_AN_IMAGE), 400,
                           "cannot read image upload.png (query)"),
    "unknown classifier": (lambda c, f: classify(c, "made-up", f["queries"] / "q0.png"), 404,
                           "this classifier is no longer on the server"),
    "unknown download": (lambda c, f: c.get("/api/classifier/made-up/cnn.pt"), 404,
                         "press Generate again"),
    "other host": (lambda c, f: c.get("/api/info", headers={"Host": "evil.example"}), 400,
                   "Host 'evil.example' is not trusted"),
}


def good(client: Any, files: Files) -> str:
    """A classifier's token (generated, and classifying)."""
    response = generate(client, support(files))
    assert response.status_code == 200, response.get_json()
    token = response.get_json()["token"]
    assert classify(client, token, files["queries"] / "q0.png").status_code == 200
    return token


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_is_refused_and_the_server_keeps_serving(client: Any, files: Files,
                                                             case: str) -> None:
    request, status, message = BAD_REQUESTS[case]
    response = request(client, files)
    assert response.status_code == status
    assert message in response.get_json()["error"]
    good(client, files)


def test_concurrent_users_get_their_own_classifiers(client: Any, files: Files) -> None:
    app = client.application
    alpha, beta, gamma = support(files).values()
    users = [{"one": alpha, "two": beta}, {"x": gamma, "y": alpha, "z": beta}]

    def session(classes: dict[str, list[Path | bytes]]) -> list[list[str]]:
        client = app.test_client()  # a user of their own
        seen = []
        for _ in range(3):
            token = generate(client, classes).get_json()["token"]
            for query in sorted(files["queries"].iterdir()):
                seen.append(classify(client, token, query).get_json()["classes"])
        return seen

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(session, users))
    for classes, seen in zip(users, results, strict=True):
        assert seen == [list(classes)] * 12


def test_the_least_recently_used_classifier_expires(client: Any, files: Files) -> None:
    """keep=3: after four classifiers, the one used least recently is gone."""
    query = files["queries"] / "q0.png"
    first, second, third = (good(client, files) for _ in range(3))
    assert classify(client, first, query).status_code == 200  # now the most recent
    fourth = good(client, files)
    expired = classify(client, second, query)
    assert expired.status_code == 404 and "press Generate again" in expired.get_json()["error"]
    for token in (first, third, fourth):
        assert classify(client, token, query).status_code == 200


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_serve_fails_at_start_without_its_model(serve: ModuleType, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)  # nothing shipped
    code, err = run_cli(capsys, "serve")  # the default model, drawings_1shot
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("hypertransformer serve: error: the pretrained model "
                          "'drawings_1shot' is not shipped")
    code, err = run_cli(capsys, "serve", "--model", str(tmp_path / "nothing"))
    assert code == 2 and len(err.splitlines()) == 1 and "neither a checkpoint file" in err
    code, err = run_cli(capsys, "serve", "--model", "cht_omniglot_class")
    assert code == 2 and len(err.splitlines()) == 1 and "is a continual model" in err


def test_serve_on_a_busy_or_impossible_port(serve: ModuleType, files: Files,
                              capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server((serve.HOST, 0)) as busy:
        port = busy.getsockname()[1]
        code, err = run_cli(capsys, "serve", "--model", str(files["run"]), "--port", str(port))
    assert code == 2 and err == (f"hypertransformer serve: error: cannot listen on "
                                 f"127.0.0.1:{port}: address already in use; choose another "
                                 f"--port (0: any free one)\n")
    code, err = run_cli(capsys, "serve", "--model", str(files["run"]), "--port", "65536")
    assert code == 2 and err == ("hypertransformer serve: error: --port must be between 0 and "
                                 "65535; got 65536\n")


# ---- the page in Chromium -------------------------------------------------------------------

@pytest.fixture(scope="module")
def browsing(serve: ModuleType) -> ModuleType:
    """benchmarks/serve_roundtrip.py: the server, Chromium and page helpers."""
    if importlib.util.find_spec("playwright") is None:
        missing("playwright")
    spec = importlib.util.spec_from_file_location("serve_roundtrip", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not Path(module.CHROMIUM).is_file():
        missing(f"chromium ({module.CHROMIUM}; apt-get install chromium)")
    return module


def table(page: Any) -> dict[str, float]:
    """The probabilities the page shows, in percent, by class."""
    rows = [row.locator("td").all_inner_texts() for row in page.locator("#probabilities tr").all()]
    return {name: float(percent.removesuffix(" %")) for name, _, percent in rows}


def test_page_in_chromium(browsing: ModuleType, files: Files, tmp_path: Path) -> None:
    """Draw one class, upload two, Generate, download the CNN, classify a drawing and an
    upload (the page shows the downloaded CNN's probabilities), a bad upload's message, then
    Generate again; a sixth class cannot be added to the 5-way model."""
    from playwright.sync_api import sync_playwright

    with (sync_playwright() as playwright, tempfile.NamedTemporaryFile("w+") as log,
          browsing.server(files["run"], log) as url):
        browser = browsing.launch_chromium(playwright)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.goto(url(60))
        cards = page.locator(".class")
        cards.nth(2).wait_for()
        circle = cards.nth(0)
        circle.locator(".name").fill("circle")
        canvas = circle.locator("canvas")
        inked = ("c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
                 ".some(v => v < 128)")
        for drawn, radius in enumerate((0.3, 0.4)):
            ring = [(0.5 + radius * math.cos(t / 3), 0.5 + radius * math.sin(t / 3))
                    for t in range(20)]
            browsing.draw(canvas, [ring])
            assert canvas.evaluate(inked)
            circle.locator(".add-drawing").click()
            circle.locator(".thumbs img").nth(drawn).wait_for()
            assert not canvas.evaluate(inked)  # cleared for the next drawing
        assert circle.locator(".thumbs img").count() == 2
        sources = support(files)
        for card, name in zip((cards.nth(1), cards.nth(2)), ("beta", "gamma"), strict=True):
            card.locator(".name").fill(name)
            card.locator("input.files").set_input_files([str(p) for p in sources[name]])
        assert cards.nth(2).locator(".count").inner_text() == "2 pictures"

        browsing.checked_round_trip(page, lambda: page.click("#generate"))
        status = page.inner_text("#generated")
        assert re.fullmatch(r"CNN generated in \d+ ms from 6 pictures of 3 classes: [\d,]+ "
                            r"weights, [\d,]+ bytes \(page round trip \d+ ms\)\.", status), status
        with page.expect_download() as download:
            page.click("#download")
        cnn = load_classifier(download.value.path())
        assert cnn.class_names == ["circle", "beta", "gamma"]

        browsing.draw(page.locator("#query"), [[(0.2, 0.2), (0.8, 0.8)], [(0.2, 0.8), (0.8, 0.2)]])
        browsing.checked_round_trip(page, lambda: page.click("#classify"))
        shown = table(page)
        assert list(shown) == cnn.class_names and abs(sum(shown.values()) - 100) < 0.5
        query = files["queries"] / "q1.png"
        browsing.checked_round_trip(page, lambda: page.set_input_files("#query-file", str(query)))
        want = (100 * cnn.predict_proba([query])[0]).tolist()
        assert list(table(page).values()) == pytest.approx(want, abs=0.051)
        assert page.inner_text("#classified").startswith(
            f"{cnn.class_names[max(range(3), key=want.__getitem__)]}: classified in")

        notes = tmp_path / "notes.txt"
        notes.write_bytes(NOT_AN_IMAGE)
        cards.nth(2).locator("input.files").set_input_files(str(notes))
        browsing.await_answer(page, lambda: page.click("#generate"))
        assert page.locator("#error").is_visible()
        assert page.inner_text("#error").startswith(
            "cannot read image notes.txt (class 'gamma'): not in an image format")
        cards.nth(2).locator("img[title^='notes.txt']").click()  # removes it
        browsing.checked_round_trip(page, lambda: page.click("#generate"))
        assert not page.locator("#error").is_visible()

        while not page.locator("#add-class").is_disabled():
            page.click("#add-class")
        assert cards.count() == 5
        browser.close()
