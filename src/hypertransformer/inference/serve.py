"""``hypertransformer serve``: a local web page that generates a CNN from pictures drawn or
uploaded in the browser, classifies a query with it, and lets the user download it
(docs/use.md).  Needs the ``serve`` extra (Flask): ``pip install 'hypertransformer[serve]'``.

The page (``static/index.html``, plain JavaScript) talks to a small JSON API:

* ``GET /api/info``: the model's number of classes N, image size and the upload limits;
* ``POST /api/generate`` (multipart): form fields ``name`` (one per class, in order) and
  files ``class-<i>`` (the images of class ``i``) -> ``{"token", "classes", "images",
  "generate_ms", "weights", "bytes", "download"}``: the CNN's weights and BatchNorm
  statistics, their number and their size as float32;
* ``POST /api/classify`` (multipart): ``token`` and one file ``image`` -> ``{"classes",
  "probabilities", "label", "classify_ms"}``;
* ``GET /api/classifier/<token>/cnn.pt``: the generated CNN as TorchScript (exported on
  request: the export takes longer than generating).

Every generated classifier gets its own random token, which only the page that generated it
knows, so concurrent users never see each other's classes.  The server keeps the
:data:`KEEP` most recently used classifiers; an older token gets HTTP 404 with a message
asking to generate again (so does every token after a restart).  A bad request (an upload
that is not an image, too large, too many images, too many classes, an empty or unnamed
class) gets HTTP 4xx with ``{"error": message}``, which the page shows; nothing else
changes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hypertransformer.data.image_folder import read_image
from hypertransformer.inference.classifier import FewShotModel, GeneratedClassifier
from hypertransformer.inference.pretrained import FEW_SHOT_PRETRAINED, load_few_shot
from hypertransformer.precision import add_dtype_argument

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.datastructures import FileStorage

HOST = "127.0.0.1"
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
KEEP = 256  # classifiers kept (least recently used dropped first)
MAX_UPLOAD_BYTES = 16 * 2**20  # one request: all the images of a Generate
MAX_IMAGES_PER_CLASS = 20


class Classifiers:
    """The last ``keep`` generated classifiers by token, least recently used dropped first;
    safe to use from the server's threads."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._items: OrderedDict[str, GeneratedClassifier] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, item: GeneratedClassifier) -> str:
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._items[token] = item
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return token

    def get(self, token: str) -> GeneratedClassifier | None:
        with self._lock:
            item = self._items.get(token)
            if item is not None:
                self._items.move_to_end(token)
            return item


def torchscript_bytes(classifier: GeneratedClassifier) -> bytes:
    """The file ``classifier.save("cnn.pt")`` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn.pt"
        classifier.save(path)
        return path.read_bytes()


def create_app(model: FewShotModel, name: str, *, keep: int = KEEP,
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_images_per_class: int = MAX_IMAGES_PER_CLASS) -> Flask:
    """The Flask app of the page for ``model`` (shown as ``name``)."""
    from flask import Flask, abort, jsonify, request, send_file
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    app = Flask(__name__)
    # Refuse other Host headers: no other site can reach the page by DNS rebinding.
    app.config.update(MAX_CONTENT_LENGTH=max_upload_bytes, TRUSTED_HOSTS=[HOST, "localhost"])
    classifiers = Classifiers(keep)
    p = model.preprocessing

    def image(file: FileStorage, where: str) -> np.ndarray:
        pixels = read_image(BytesIO(file.read()), p.image_size, p.channels,
                            f"{file.filename or 'upload'} ({where})")
        return pixels[0]

    def classifier(token: str) -> GeneratedClassifier:
        item = classifiers.get(token)
        if item is None:
            abort(404, "this classifier is no longer on the server (it keeps the "
                       f"{keep} most recent ones, and none after a restart); press Generate "
                       "again")
        return item

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Any, int]:
        text = e.description
        if isinstance(e, RequestEntityTooLarge):
            text = (f"the upload is larger than {max_upload_bytes / 2**20:g} MB, the limit "
                    f"of one request; use fewer or smaller images")
        return jsonify(error=text), e.code or 500

    @app.errorhandler(ValueError)  # bad images, too many classes (FewShotModel.fit)
    def bad_input(e: ValueError) -> tuple[Any, int]:
        return jsonify(error=str(e)), 400

    @app.get("/")
    def page() -> Any:
        return send_file(PAGE)

    @app.get("/api/info")
    def info() -> Any:
        return jsonify(model=name, num_labels=model.config.num_labels,
                       image_size=p.image_size, channels=p.channels,
                       max_images_per_class=max_images_per_class,
                       max_upload_bytes=max_upload_bytes)

    @app.post("/api/generate")
    def generate() -> Any:
        names = [n.strip() for n in request.form.getlist("name")]
        if not names:
            abort(400, "no classes; add a class with a few pictures")
        images, labels = [], []
        for i, label in enumerate(names):
            if not label:
                abort(400, f"class {i + 1} has no name; give every class a name")
            if label in names[:i]:
                abort(400, f"two classes are named {label!r}; give each class its own name")
            files = request.files.getlist(f"class-{i}")
            if not files:
                abort(400, f"class {label!r} has no pictures; draw or upload at least one")
            if len(files) > max_images_per_class:
                abort(400, f"class {label!r} has {len(files)} pictures; the limit is "
                           f"{max_images_per_class} per class")
            images += [image(f, f"class {label!r}") for f in files]
            labels += [label] * len(files)
        start = time.perf_counter()
        fitted = model.fit(images, labels)
        generate_ms = (time.perf_counter() - start) * 1000
        token = classifiers.add(fitted)
        tensors = list(fitted.buffers())
        return jsonify(token=token, classes=names, images=len(images), generate_ms=generate_ms,
                       weights=sum(t.numel() for t in tensors),
                       bytes=sum(t.nbytes for t in tensors),
                       download=f"/api/classifier/{token}/cnn.pt")

    @app.post("/api/classify")
    def classify() -> Any:
        fitted = classifier(request.form.get("token", ""))
        file = request.files.get("image")
        if file is None:
            abort(400, "no query picture; draw or upload one")
        query = image(file, "query")
        start = time.perf_counter()
        probabilities = fitted.predict_proba([query])[0].tolist()
        classify_ms = (time.perf_counter() - start) * 1000
        names = fitted.class_names
        return jsonify(classes=names, probabilities=probabilities,
                       label=names[int(np.argmax(probabilities))], classify_ms=classify_ms)

    @app.get("/api/classifier/<token>/cnn.pt")
    def download(token: str) -> Any:
        return send_file(BytesIO(torchscript_bytes(classifier(token))), as_attachment=True,
                         download_name="cnn.pt", mimetype="application/octet-stream")

    return app


def _serve(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("flask") is None:
        raise ValueError("serve needs the serve extra: pip install 'hypertransformer[serve]'")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535; got {args.port}")
    from werkzeug.serving import make_server

    torch.set_num_threads(1)  # one core per request (docs/use.md, Speed)
    # A missing model fails here, before serving.  fp32 by default: the page then shows
    # exactly what the downloaded (float32) CNN gives.
    model = load_few_shot(args.model, dtype=args.dtype or "fp32")
    app = create_app(model, str(args.model))
    try:
        # Bound here rather than by werkzeug, which exits on a busy port.
        sock = socket.create_server((HOST, args.port))
    except OSError as e:
        reason = os.strerror(e.errno).lower() if e.errno else e
        raise ValueError(f"cannot listen on {HOST}:{args.port}: {reason}; choose "
                         f"another --port (0: any free one)") from e
    server = make_server(HOST, args.port, app, threaded=True, fd=sock.fileno())
    n = model.config.num_labels
    print(f"serving {args.model} ({n} classes at most) on "
          f"http://{HOST}:{sock.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
    server.serve_forever()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page: draw or upload pictures, get a CNN",
                       description=f"Serves a web page on {HOST} where pictures drawn or "
                                   f"uploaded per class become a CNN classifier, which "
                                   f"classifies a query and can be downloaded. Needs "
                                   f"pip install 'hypertransformer[serve]'.")
    p.add_argument("--model", default="drawings_1shot",
                   help=f"a pretrained name ({', '.join(FEW_SHOT_PRETRAINED)}; default "
                        f"drawings_1shot, the one for drawings from outside Omniglot), a log "
                        f"dir of `hypertransformer train` or a checkpoint file")
    p.add_argument("--port", type=int, default=8000,
                   help="the port on 127.0.0.1 (8000; 0: any free port, printed)")
    add_dtype_argument(p, default="fp32")
    p.set_defaults(func=_serve)
