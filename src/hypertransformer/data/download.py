"""Download the official Omniglot zips (SPEC §2.1), checked before they are kept.

A file is accepted when its md5 or sha256 is in the checksum table (the official md5s, and
the sha256s of the rebuilt zips in ``data/omniglot/SOURCE.md``, which hold the same PNGs).
A file that is already in ``dest_dir`` and matches no hash is also accepted if its content
is complete (a readable zip with the official 964 / 659 characters of 20 PNGs each), so
re-zipped copies work; otherwise it is an error and the file is left alone.  A downloaded file
that matches no hash is removed and reported.  Downloads go to a temporary file in
``dest_dir`` that is renamed into place only after the check.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from hypertransformer.data.base import DatasetError
from hypertransformer.data.omniglot import OFFICIAL_CHARACTERS, OFFICIAL_DRAWERS, PARTS, Source

OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"

# file name -> accepted (algorithm, hex digest) pairs
Checksums = dict[str, tuple[tuple[str, str], ...]]
KNOWN_CHECKSUMS: Checksums = {
    "images_background.zip": (
        ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
        ("sha256", "6ecb72c17920118508dd3c624a1ab2c292273a26ceccbc4a3ebfce3946f18c9d")),
    "images_evaluation.zip": (
        ("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
        ("sha256", "fe5339e4ef759ba52c63a2a9ec0cafd379689a6bdcf23fe79ae3f2d4bdd22639")),
}
_CHUNK = 1 << 20


def download_omniglot(dest_dir: str | Path, base_url: str = OFFICIAL_URL,
                      checksums: Checksums | None = None, timeout: float = 60.0) -> Path:
    """Make ``dest_dir`` hold both checked Omniglot zips; returns ``dest_dir`` (a directory
    :func:`hypertransformer.data.omniglot.load_omniglot` reads).  ``checksums`` defaults to
    :data:`KNOWN_CHECKSUMS`."""
    checksums = KNOWN_CHECKSUMS if checksums is None else checksums
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        name = f"{part}.zip"
        accepted = checksums.get(name, ())
        target = dest / name
        if target.exists():
            _check_existing(target, part, accepted)
        else:
            _fetch(f"{base_url.rstrip('/')}/{name}", target, accepted, timeout)
    return dest


def check_omniglot_zip(path: str | Path, part: str) -> None:
    """Content check: ``path`` is an intact zip with the official number of characters of
    ``part`` (``images_background`` or ``images_evaluation``), 20 PNGs each."""
    path = Path(path)
    source = Source(path.parent, part) if path.name == f"{part}.zip" else None
    if source is None or not source.is_zip:
        raise DatasetError(f"{path}: expected a file named {part}.zip")
    first_id = 1 + sum(OFFICIAL_CHARACTERS[p] for p in PARTS[:PARTS.index(part)])
    chars = source.index(first_id)
    for info in source.archive.infolist():  # read everything: CRC and deflate errors
        try:
            with source.archive.open(info) as f:
                while f.read(_CHUNK):
                    pass
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise DatasetError(f"{path}: member {info.filename} is corrupt ({e})") from e
    drawers = len(chars[0].members)
    if len(chars) != OFFICIAL_CHARACTERS[part] or drawers != OFFICIAL_DRAWERS:
        raise DatasetError(f"{path}: has {len(chars)} characters of {drawers} drawings; "
                           f"Omniglot's {part} has {OFFICIAL_CHARACTERS[part]} of "
                           f"{OFFICIAL_DRAWERS}")


def _digests(path: Path, algorithms: set[str]) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _matches(digests: dict[str, str], accepted: tuple[tuple[str, str], ...]) -> bool:
    return any(digests.get(a) == hexdigest.lower() for a, hexdigest in accepted)


def _describe(digests: dict[str, str], accepted: tuple[tuple[str, str], ...]) -> str:
    want = ", ".join(f"{a} {h}" for a, h in accepted) or "(no known checksum)"
    got = ", ".join(f"{a} {h}" for a, h in sorted(digests.items()))
    return f"expected {want}; got {got}"


def _check_existing(target: Path, part: str, accepted: tuple[tuple[str, str], ...]) -> None:
    digests = _digests(target, {a for a, _ in accepted} | {"sha256"})
    if _matches(digests, accepted):
        return
    try:
        check_omniglot_zip(target, part)
    except DatasetError as e:
        raise DatasetError(f"existing file {target} is not the official Omniglot zip "
                           f"({_describe(digests, accepted)}) and fails the content check "
                           f"({e}); delete it to download it again") from e


def _fetch(url: str, target: Path, accepted: tuple[tuple[str, str], ...],
           timeout: float) -> None:
    hashers = {a: hashlib.new(a) for a in {a for a, _ in accepted} | {"sha256"}}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                for h in hashers.values():
                    h.update(chunk)
        digests = {a: h.hexdigest() for a, h in hashers.items()}
        if not _matches(digests, accepted):
            raise DatasetError(f"{target.name} downloaded from {url} failed the checksum "
                               f"check ({_describe(digests, accepted)}); the file was removed")
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise DatasetError(f"cannot download {url}: {e}. Check the network, or put "
                           f"{target.name} into {target.parent} by hand") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
