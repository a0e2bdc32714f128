"""The Omniglot downloader, against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
from realdata import omniglot_dir

from hypertransformer.data.base import DatasetError
from hypertransformer.data.download import (
    KNOWN_CHECKSUMS,
    check_omniglot_zip,
    download_omniglot,
)

REPO = Path(__file__).resolve().parents[1]
NAMES = ("images_background.zip", "images_evaluation.zip")




class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        QuietHandler.requests.append(self.path)


@pytest.fixture
def server(tmp_path):
    """(serve_dir, base_url): files put into serve_dir are served at base_url."""
    serve = tmp_path / "served"
    serve.mkdir()
    QuietHandler.requests = []
    handler = functools.partial(QuietHandler, directory=str(serve))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield serve, f"http://127.0.0.1:{httpd.server_address[1]}/python"
    httpd.shutdown()
    httpd.server_close()


def fake_zip(tag: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("images_background/Fake/character01/0001_01.png", tag)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve_fakes(serve: Path) -> dict[str, bytes]:
    (serve / "python").mkdir()
    files = {name: fake_zip(name) for name in NAMES}
    for name, data in files.items():
        (serve / "python" / name).write_bytes(data)
    return files


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_downloads_and_checks_sha256(server, tmp_path):
    serve, url = server
    files = serve_fakes(serve)
    table = {n: (("sha256", sha256(d)),) for n, d in files.items()}
    dest = download_omniglot(tmp_path / "dest", base_url=url, checksums=table)
    assert dest == tmp_path / "dest"
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert leftovers(dest) == []
    assert sorted(QuietHandler.requests) == [f"/python/{n}" for n in NAMES]
    # Present and matching: nothing is fetched again.
    QuietHandler.requests.clear()
    download_omniglot(dest, base_url=url, checksums=table)
    assert QuietHandler.requests == []


def test_md5_is_accepted(server, tmp_path):
    serve, url = server
    files = serve_fakes(serve)
    table = {n: (("md5", hashlib.md5(d).hexdigest().upper()), ("sha256", "0" * 64))
             for n, d in files.items()}
    dest = download_omniglot(tmp_path / "dest", base_url=url + "/", checksums=table)
    assert all((dest / n).is_file() for n in NAMES)


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    serve, url = server
    files = serve_fakes(serve)
    table = {n: (("sha256", "ab" * 32),) for n in NAMES}
    with pytest.raises(DatasetError) as err:
        download_omniglot(tmp_path / "dest", base_url=url, checksums=table)
    msg = str(err.value)
    assert "images_background.zip" in msg and "ab" * 32 in msg
    assert sha256(files["images_background.zip"]) in msg and "removed" in msg
    assert list((tmp_path / "dest").iterdir()) == []  # no file, no temp file


def test_http_error_and_no_server(server, tmp_path):
    _, url = server  # nothing served: 404
    with pytest.raises(DatasetError, match="cannot download .*images_background.zip.*404"):
        download_omniglot(tmp_path / "dest", base_url=url)
    assert list((tmp_path / "dest").iterdir()) == []
    with pytest.raises(DatasetError, match="cannot download"):
        download_omniglot(tmp_path / "dest", base_url="http://127.0.0.1:9/x", timeout=5)


def test_real_zips_served_locally_pass_the_known_sha256(server, tmp_path):
    serve, url = server
    (serve / "python").mkdir()
    for name in NAMES:
        shutil.copy(omniglot_dir() / name, serve / "python" / name)
    dest = download_omniglot(tmp_path / "dest", base_url=url)  # the default KNOWN_CHECKSUMS
    for name in NAMES:
        assert (dest / name).read_bytes() == (omniglot_dir() / name).read_bytes()
        assert sha256((dest / name).read_bytes()) == dict(KNOWN_CHECKSUMS[name])["sha256"]


def test_existing_local_zip_passes_the_content_check(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in NAMES:
        shutil.copy(omniglot_dir() / name, dest / name)
    # No known hash matches (empty table) and no server: accepted by content, nothing fetched.
    download_omniglot(dest, base_url="http://127.0.0.1:9/none", checksums={})


def test_existing_bad_local_zip_is_an_error_and_kept(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "images_background.zip").write_bytes(fake_zip("x"))
    with pytest.raises(DatasetError) as err:
        download_omniglot(dest, base_url="http://127.0.0.1:9/none")
    msg = str(err.value)
    assert "images_background.zip" in msg and KNOWN_CHECKSUMS[NAMES[0]][0][1] in msg
    assert "has 1 characters of 1 drawings; Omniglot's images_background has 964 of 20" in msg
    assert (dest / "images_background.zip").is_file()


def test_content_check_catches_corrupt_members(tmp_path):
    src = omniglot_dir() / "images_evaluation.zip"
    check_omniglot_zip(src, "images_evaluation")
    bad = tmp_path / "images_evaluation.zip"
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.infolist()[100]
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 5] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"{info.filename}"):
        check_omniglot_zip(bad, "images_evaluation")
    with pytest.raises(DatasetError, match="expected a file named images_background.zip"):
        check_omniglot_zip(bad, "images_background")


def test_download_command_then_info(server, tmp_path, capsys):
    """``hypertransformer data download`` fetches (from a local server) and checks the zips;
    ``data info`` then reads them."""
    import json

    from hypertransformer.cli import main

    serve, url = server
    (serve / "python").mkdir()
    for name in NAMES:
        shutil.copy(omniglot_dir() / name, serve / "python" / name)
    dest = tmp_path / "omniglot"
    assert main(["data", "download", "omniglot", "--dest", str(dest), "--url", url]) == 0
    assert "checked" in capsys.readouterr().out
    assert main(["data", "info", "omniglot", "--data-dir", str(dest), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["num_classes"] == 1623 and info["samples_per_class"]["min"] == 20
