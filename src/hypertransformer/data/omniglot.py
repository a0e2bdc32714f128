"""Omniglot from the official zips or their extracted folders (SPEC §2.1).

A directory holds the two halves, each as ``<part>.zip`` or as the extracted folder
``<part>/`` (the zip is used when both exist), with the official layout
``<part>/<Alphabet>/characterNN/NNNN_YY.png``: ``NNNN`` is the global character id
(background 0001-0964, evaluation 0965-1623) and ``YY`` the drawer.

* Class index = character id - 1; class names are ``Alphabet/characterNN``.
  (The ids are not in alphabet-name order: class 0 is ``Arcadian/character01``.)
* Samples of a class are sorted by drawer.
* Ink high: the PNGs have black strokes on white, so pixels are inverted (strokes 255,
  background 0).
* Resized 105 -> ``image_size`` once, at load, by :func:`numpy_cache.fit_images` (bilinear
  with antialiasing, i.e. an area-like average when shrinking); gray, or replicated to 3
  channels.

The layout is checked structurally (ids consecutive across both halves with no gaps, every
character with drawers 01..n for the same n, one character per id), so a smaller directory
with the official layout (a test fixture) loads too; the downloader checks the official counts.

The decoded, resized array is cached as ``.npy`` (+ ``.json`` class names) under
:func:`cache_dir`, keyed by the sources (path, size and mtime of each zip, or of every file
of an extracted folder), ``image_size`` and ``channels``; the first load decodes 32,460 PNGs
(~10 s), later loads read the cache (well under a second).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hypertransformer.data.base import ClassDataset, DatasetError
from hypertransformer.data.cache import atomic_write, cache_dir
from hypertransformer.data.numpy_cache import check_image_args, fit_images

PARTS = ("images_background", "images_evaluation")
OFFICIAL_CHARACTERS = {"images_background": 964, "images_evaluation": 659}
OFFICIAL_DRAWERS = 20
OMNIGLOT_DIR_ENV = "HT_OMNIGLOT_DIR"

_CACHE_VERSION = 1  # bump when the decoded pixels change
_MEMBER = re.compile(r"(?:.*/)?([^/]+)/([^/]+)/(\d{4})_(\d{2})\.png")
_CHARS_PER_BATCH = 64
# What reading one member (zip or file) and decoding its PNG raise on damaged bytes:
# NotImplementedError (unknown compression or zip feature), RuntimeError (a member flagged
# encrypted), DecompressionBombError (a header claiming a huge image), and the usual ones.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zipfile.BadZipFile, zlib.error,
                  NotImplementedError, RuntimeError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Character:
    char_id: int  # the global id NNNN; class index = char_id - 1
    name: str  # "Alphabet/characterNN"
    members: tuple[str, ...]  # its PNGs (zip member names or paths relative to the folder),
    # sorted by drawer


class Source:
    """One half of Omniglot: ``<part>.zip`` or the extracted folder ``<part>/``."""

    def __init__(self, root: Path, part: str):
        zip_path, folder = root / f"{part}.zip", root / part
        if zip_path.is_file():
            self.path = zip_path
        elif folder.is_dir():
            self.path = folder
        elif folder.exists():
            raise DatasetError(f"{folder} is a file, not the extracted folder {part}/; "
                               f"expected {part}.zip or {part}/<Alphabet>/characterNN/NNNN_YY.png")
        else:
            raise DatasetError(
                f"Omniglot not found in {root}: expected {part}.zip or the extracted folder "
                f"{part}/ (official layout {part}/<Alphabet>/characterNN/NNNN_YY.png). Download "
                f"it with hypertransformer.data.download.download_omniglot({str(root)!r}) or "
                f"point data_dir / ${OMNIGLOT_DIR_ENV} at a directory that has it")
        self.part = part
        self.is_zip = self.path.suffix == ".zip"

    @functools.cached_property
    def _files(self) -> list[tuple[str, int, int]]:
        """(member, size, mtime_ns) of every file of an extracted folder, sorted."""
        found: list[tuple[str, int, int]] = []

        def scan(folder: str, prefix: str) -> None:
            with os.scandir(folder) as entries:
                for e in entries:
                    if e.is_dir():
                        scan(e.path, f"{prefix}{e.name}/")
                    else:
                        st = e.stat()
                        found.append((prefix + e.name, st.st_size, st.st_mtime_ns))

        scan(str(self.path), "")
        return sorted(found)

    def fingerprint(self) -> str:
        if self.is_zip:
            st = self.path.stat()
            return f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return f"{self.path.resolve()}|" + "|".join(f"{n}:{s}:{t}" for n, s, t in self._files)

    @functools.cached_property
    def archive(self) -> zipfile.ZipFile:
        """The open zip (closed when the Source is garbage-collected)."""
        try:
            return zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise DatasetError(f"{self.path} is not a readable zip (truncated or corrupt "
                               f"download?): {e}. Delete it and download it again") from e

    def read(self, member: str) -> bytes:
        return self.archive.read(member) if self.is_zip else (self.path / member).read_bytes()

    def index(self, first_id: int) -> list[Character]:
        """The characters, sorted by id, checked to be ids ``first_id, first_id+1, ...``."""
        names = self.archive.namelist() if self.is_zip else [n for n, _, _ in self._files]
        chars: dict[int, tuple[str, dict[int, str]]] = {}
        for member in names:
            m = _MEMBER.fullmatch(member)
            if not m:
                continue
            cname, cid, drawer = f"{m[1]}/{m[2]}", int(m[3]), int(m[4])
            seen_name, drawings = chars.setdefault(cid, (cname, {}))
            if seen_name != cname:
                raise DatasetError(f"{self.path}: character id {cid:04d} is used by both "
                                   f"{seen_name} and {cname}")
            if drawer in drawings:
                raise DatasetError(f"{self.path}: {member} duplicates {drawings[drawer]}")
            drawings[drawer] = member
        if not chars:
            raise DatasetError(f"{self.path} holds no Omniglot PNGs (expected "
                               f"{self.part}/<Alphabet>/characterNN/NNNN_YY.png)")
        ids = sorted(chars)
        missing = sorted(set(range(first_id, ids[-1] + 1)) - set(ids))
        if ids[0] != first_id or missing:
            gap = missing[0] if missing else first_id
            raise DatasetError(f"{self.path}: character ids must run {first_id:04d}, "
                               f"{first_id + 1:04d}, ... without gaps; {gap:04d} is missing "
                               f"(incomplete extraction or download?)")
        if len({chars[i][0] for i in ids}) != len(ids):
            raise DatasetError(f"{self.path}: a character folder holds several ids")
        n = max(max(drawings) for _, drawings in chars.values())
        for i in ids:
            cname, drawings = chars[i]
            if sorted(drawings) != list(range(1, n + 1)):
                lacking = sorted(set(range(1, n + 1)) - set(drawings))
                raise DatasetError(f"{self.path}: {cname} has {len(drawings)} drawings, "
                                   f"expected {n} (missing drawer(s) "
                                   f"{', '.join(f'{d:02d}' for d in lacking)})")
        return [Character(i, chars[i][0], tuple(chars[i][1][d] for d in range(1, n + 1)))
                for i in ids]


def omniglot_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir``, else ``$HT_OMNIGLOT_DIR``; it must be an existing directory."""
    chosen = data_dir or os.environ.get(OMNIGLOT_DIR_ENV)
    if not chosen:
        raise DatasetError(f"no Omniglot directory: pass data_dir (--data-dir) or set "
                           f"${OMNIGLOT_DIR_ENV} to the directory with images_background.zip "
                           f"and images_evaluation.zip")
    root = Path(chosen).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"Omniglot directory {root} is a file, not a folder; pass the "
                           f"directory that holds images_background.zip and "
                           f"images_evaluation.zip")
    if not root.is_dir():
        raise DatasetError(f"Omniglot directory {root} does not exist; pass the directory "
                           f"that holds images_background.zip and images_evaluation.zip")
    return root


def load_omniglot(data_dir: str | Path | None = None, image_size: int = 28,
                  channels: int = 1) -> ClassDataset:
    """All 1623 Omniglot classes (module docstring), uint8 ``[20, image_size, image_size,
    channels]`` each, ink high."""
    check_image_args(image_size, channels)
    root = omniglot_dir(data_dir)
    sources = [Source(root, part) for part in PARTS]
    key = hashlib.sha256("\n".join(
        [f"v{_CACHE_VERSION}", str(image_size), str(channels)]
        + [s.fingerprint() for s in sources]).encode()).hexdigest()[:20]
    npy = cache_dir() / f"omniglot_{image_size}px_{channels}ch_{key}.npy"
    js = npy.with_suffix(".json")
    images, names = _read_cache(npy, js, (image_size, image_size, channels))
    if images is None:
        images, names = _decode(sources, image_size, channels)
        atomic_write(js, lambda f: f.write(json.dumps(names).encode()))
        atomic_write(npy, lambda f: np.save(f, images))
    return ClassDataset("omniglot", list(images), names)


def _decode(sources: list[Source], image_size: int,
            channels: int) -> tuple[np.ndarray, list[str]]:
    indexes, first_id = [], 1
    for source in sources:
        indexes.append(source.index(first_id))
        first_id = indexes[-1][-1].char_id + 1
    drawers = [len(chars[0].members) for chars in indexes]
    if len(set(drawers)) != 1:
        raise DatasetError("the Omniglot halves disagree on drawings per character: " + ", ".join(
            f"{s.path}: {n}" for s, n in zip(sources, drawers, strict=True)))
    total = sum(len(chars) for chars in indexes)
    out = np.empty((total, drawers[0], image_size, image_size, channels), np.uint8)
    for source, chars in zip(sources, indexes, strict=True):
        for start in range(0, len(chars), _CHARS_PER_BATCH):  # batched: fewer resize calls
            batch = chars[start:start + _CHARS_PER_BATCH]
            members = [m for ch in batch for m in ch.members]
            drawings = [_decode_png(source, m) for m in members]
            _check_sizes(source, members, drawings)
            ink = fit_images(255 - np.stack(drawings)[..., None], image_size, channels)
            first = batch[0].char_id - 1
            out[first:first + len(batch)] = ink.reshape(len(batch), *out.shape[1:])
    return out, [ch.name for chars in indexes for ch in chars]


def _decode_png(source: Source, member: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(source.read(member))) as im:
            return np.asarray(im.convert("L"))
    except _DECODE_ERRORS as e:
        raise DatasetError(f"{source.path}: cannot read {member} ({e}); the file is corrupt, "
                           f"replace it (download Omniglot again)") from e


def _check_sizes(source: Source, members: list[str], drawings: list[np.ndarray]) -> None:
    """All drawings of a batch must share one size; name a member of another size."""
    sizes = Counter(d.shape for d in drawings)
    if len(sizes) > 1:
        usual = sizes.most_common(1)[0][0]
        odd, size = next((m, d.shape) for m, d in zip(members, drawings, strict=True)
                         if d.shape != usual)
        raise DatasetError(f"{source.path}: {odd} is {size[1]}x{size[0]} pixels, the other "
                           f"drawings {usual[1]}x{usual[0]}; the file is damaged, replace it "
                           f"(download Omniglot again)")


def _read_cache(npy: Path, js: Path,
                shape: tuple[int, int, int]) -> tuple[np.ndarray | None, list[str]]:
    """The cached images and names, or (None, []) when absent or unusable (then rebuilt)."""
    if not (npy.is_file() and js.is_file()):
        return None, []
    try:
        names = json.loads(js.read_text())
        images = np.load(npy)
    except Exception:  # damaged bytes raise many types (e.g. TokenError from the header)
        return None, []  # a damaged cache is rebuilt
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 5
            or not isinstance(names, list) or not all(isinstance(n, str) for n in names)
            or len(images) != len(names) or images.shape[2:] != shape):
        return None, []
    return images, names
