"""The round trips of the ``hypertransformer serve`` page in headless Chromium.

Usage::

    python benchmarks/serve_roundtrip.py --model LOG_DIR --support DIR --query IMAGE \\
        [--repeats 10] [--screenshot docs/serve.png]

Starts ``hypertransformer serve --model LOG_DIR --port 0`` in a subprocess and opens its page
in Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright: ``pip install
'hypertransformer[dev]'``).  The page gets one class per sub-folder of ``DIR`` (uploaded, as
with ``hypertransformer generate``), then presses Generate ``--repeats`` times and classifies
the uploaded ``IMAGE`` ``--repeats`` times.  Prints one JSON line: the medians, in ms, of the
page's round trips (from the request to the answer shown, measured by the page) and of the
server's own times (``generate_ms``: ``ht.fit``; ``classify_ms``: ``predict_proba``), and the
CNN's size (float32 bytes).  ``--screenshot`` saves the page at the end.

The helpers (server, browser, drawing, waiting for an answer) are also the browser test's
(tests/test_serve.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from playwright.sync_api import Browser, Locator, Page, Playwright, sync_playwright

from hypertransformer.inference.cli import support_folder

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SERVING = re.compile(r"serving .* on (http://\S+/)")


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless (Playwright's own browsers are not used)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@contextmanager
def server(model: str | Path, log: IO[str]) -> Iterator[Callable[[float], str]]:
    """``hypertransformer serve --model MODEL --port 0`` in a subprocess writing to ``log``
    (a file); yields ``url(timeout)``, which waits for its address.  Stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hypertransformer.cli", "serve", "--model", str(model),
         "--port", "0"], stdout=log, stderr=subprocess.STDOUT, text=True)

    def url(timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = SERVING.search(Path(log.name).read_text())
            if found:
                return found[1]
            if process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"hypertransformer serve did not start:\n"
                           f"{Path(log.name).read_text()}")

    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def await_answer(page: Page, action: Callable[[], object]) -> None:
    """Runs ``action`` (a click, an upload) and waits until the page has shown the server's
    answer (or its error message)."""
    count = "Number(document.body.dataset.answers ?? 0)"
    before = page.evaluate(count)
    action()
    page.wait_for_function(f"{count} > {before}")


def checked_round_trip(page: Page, action: Callable[[], object]) -> float:
    """The page's round trip (ms) of the request ``action`` makes; RuntimeError with the
    page's message if the server refused it."""
    await_answer(page, action)
    if page.locator("#error").is_visible():
        raise RuntimeError(f"the page shows an error: {page.inner_text('#error')}")
    return float(page.evaluate("document.body.dataset.roundTripMs"))


def draw(canvas: Locator, strokes: Sequence[Sequence[tuple[float, float]]]) -> None:
    """Draws with the mouse on ``canvas``: each stroke a polyline of points given as
    fractions (0..1) of the canvas's width and height."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None, "the canvas is not visible"
    mouse = canvas.page.mouse
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"])
                  for x, y in stroke]
        mouse.move(*points[0])
        mouse.down()
        for point in points[1:]:
            mouse.move(*point, steps=4)
        mouse.up()


def set_classes(page: Page, classes: dict[str, Sequence[Path]]) -> None:
    """The page's classes: one per entry, named, with its files uploaded."""
    while page.locator(".class").count() > len(classes):
        page.locator(".class .remove-class").last.click()
    while page.locator(".class").count() < len(classes):
        page.click("#add-class")
    for card, (name, files) in zip(page.locator(".class").all(), classes.items(), strict=True):
        card.locator(".name").fill(name)
        card.locator("input.files").set_input_files([str(f) for f in files])


def measure(page: Page, url: str, classes: dict[str, Sequence[Path]], query: Path,
            repeats: int) -> dict[str, object]:
    """The medians of ``repeats`` Generates and ``repeats`` classifications of ``query``."""
    page.goto(url)
    page.wait_for_selector(".class")
    set_classes(page, classes)
    times: dict[str, list[float]] = {key: [] for key in
                                     ("generate_round_trip_ms", "generate_ms",
                                      "classify_round_trip_ms", "classify_ms")}
    size = 0
    for _ in range(repeats):
        with page.expect_response("**/api/generate") as response:
            times["generate_round_trip_ms"].append(
                checked_round_trip(page, lambda: page.click("#generate")))
        answer = response.value.json()
        times["generate_ms"].append(answer["generate_ms"])
        size = answer["bytes"]
    for _ in range(repeats):
        with page.expect_response("**/api/classify") as response:
            times["classify_round_trip_ms"].append(checked_round_trip(
                page, lambda: page.set_input_files("#query-file", str(query))))
        times["classify_ms"].append(response.value.json()["classify_ms"])
    medians = {key: round(statistics.median(values), 1) for key, values in times.items()}
    images = sum(len(files) for files in classes.values())
    return {"classes": len(classes), "images": images, "repeats": repeats, **medians,
            "cnn_bytes": size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="what `hypertransformer serve` takes")
    parser.add_argument("--support", required=True, type=Path, help="DIR/<class>/<images>")
    parser.add_argument("--query", required=True, type=Path, help="an image to classify")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--screenshot", type=Path, help="save the page here at the end")
    args = parser.parse_args(argv)
    files, labels = support_folder(args.support)
    classes: dict[str, list[Path]] = {}
    for file, label in zip(files, labels, strict=True):
        classes.setdefault(label, []).append(file)
    with (sync_playwright() as playwright, tempfile.NamedTemporaryFile("w+") as log,
          server(args.model, log) as url):
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        print(json.dumps(measure(page, url(120), classes, args.query, args.repeats)))
        if args.screenshot:
            page.screenshot(path=str(args.screenshot), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
