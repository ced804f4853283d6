"""Safe download against a real HTTP server on 127.0.0.1: hashes, truncation, resume, cancel."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from SGPSAMLib import models
from SGPSAMLib.cli import main
from SGPSAMLib.download import (
    ConsentRequired,
    DownloadCancelled,
    DownloadError,
    DownloadIntegrityError,
    download,
    download_model,
)
from SGPSAMLib.errors import SGPSAMError

DATA = np.random.default_rng(7).integers(0, 256, size=1_500_000, dtype=np.uint8).tobytes()
DATA_SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path]`` = dict(data=bytes, range=bool, lie=int, status=int)."""

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        server: Any = self.server
        path = urllib.parse.urlsplit(self.path).path
        server.requests.append({"path": path, "raw": self.path,
                                "range": self.headers.get("Range")})
        route = server.routes.get(path)
        if route is None or route.get("status", 200) != 200:
            self.send_error(route.get("status", 404) if route else 404)
            return
        data: bytes = route["data"]
        start = 0
        requested = self.headers.get("Range")
        if requested and route.get("range", True):
            start = int(requested.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        announced = len(body) + route.get("lie", 0)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        try:
            self.wfile.write(body[: route["cut"]] if "cut" in route else body)
        except ConnectionError:
            pass
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up mid-body (cancel tests) is expected


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes = {}  # type: ignore[attr-defined]
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def http(server: _Server, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fresh routes/request log; returns a helper making URLs. No proxy from the environment."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY", "no_proxy", "NO_PROXY", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    server.routes.clear()  # type: ignore[attr-defined]
    server.requests.clear()  # type: ignore[attr-defined]
    host, port = server.server_address[:2]

    class Helper:
        routes = server.routes  # type: ignore[attr-defined]
        requests = server.requests  # type: ignore[attr-defined]
        address = f"{host}:{port}"

        @staticmethod
        def url(path: str) -> str:
            return f"http://{host}:{port}{path}"

    Helper.routes["/data.bin"] = {"data": DATA}
    return Helper


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_download_success_with_progress(http: Any, tmp_path: Path) -> None:
    calls: list[tuple[int, Any]] = []
    dest = tmp_path / "sub" / "model.pth"
    result = download(http.url("/data.bin"), dest, DATA_SHA, size_bytes=len(DATA),
                      progress=lambda done, total: calls.append((done, total)))
    assert result == dest and dest.read_bytes() == DATA
    assert _files(dest.parent) == ["model.pth"]
    assert calls[0] == (0, len(DATA)) and calls[-1] == (len(DATA), len(DATA))
    done = [c[0] for c in calls]
    assert done == sorted(done) and len(calls) >= 3  # chunked: several updates


def test_wrong_sha256_is_rejected_and_nothing_left(http: Any, tmp_path: Path) -> None:
    tampered = bytearray(DATA)
    tampered[1000] ^= 0xFF
    http.routes["/tampered.bin"] = {"data": bytes(tampered)}
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadIntegrityError, match="SHA-256 mismatch") as info:
        download(http.url("/tampered.bin"), dest, DATA_SHA)
    assert http.url("/tampered.bin") in str(info.value) and str(dest) in str(info.value)
    assert _files(tmp_path) == []


def test_existing_file_is_kept_when_the_new_download_fails(http: Any, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    dest.write_bytes(b"old")
    http.routes["/bad.bin"] = {"data": b"not the file"}
    with pytest.raises(DownloadIntegrityError):
        download(http.url("/bad.bin"), dest, DATA_SHA)
    assert _files(tmp_path) == ["model.pth"] and dest.read_bytes() == b"old"


def test_truncated_transfer_is_rejected_and_nothing_left(http: Any, tmp_path: Path) -> None:
    # Content-Length announces more than is sent, then the server closes the connection.
    http.routes["/short.bin"] = {"data": DATA, "cut": 600_000}
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadIntegrityError, match="truncated transfer: received 600000 of "
                                                     "1500000 bytes"):
        download(http.url("/short.bin"), dest, DATA_SHA)
    assert _files(tmp_path) == []


def test_announced_size_must_match_published_size(http: Any, tmp_path: Path) -> None:
    with pytest.raises(DownloadIntegrityError, match="published file has 1500001"):
        download(http.url("/data.bin"), tmp_path / "m.pth", DATA_SHA, size_bytes=len(DATA) + 1)
    assert _files(tmp_path) == []


def test_http_404_names_url_and_destination(http: Any, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        download(http.url("/missing.pth"), dest, DATA_SHA)
    assert info.value.status == 404 and info.value.url == http.url("/missing.pth")
    assert http.url("/missing.pth") in str(info.value) and str(dest) in str(info.value)
    assert _files(tmp_path) == []


def test_unreachable_server_is_a_clear_error(http: Any, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.pth"
    with pytest.raises(DownloadError, match="cannot reach the server") as info:
        download(url, tmp_path / "model.pth", DATA_SHA, timeout=5)
    assert url in str(info.value) and _files(tmp_path) == []


def test_stop_cancels_and_cleans_up(http: Any, tmp_path: Path) -> None:
    seen: list[int] = []
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadCancelled, match="cancelled"):
        download(http.url("/data.bin"), dest, DATA_SHA,
                 progress=lambda done, total: seen.append(done), stop=lambda: seen[-1] > 0)
    assert 0 < seen[-1] < len(DATA)
    assert _files(tmp_path) == []


def test_resume_partial_file_with_range(http: Any, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    Path(f"{dest}.part").write_bytes(DATA[:400_000])
    calls: list[tuple[int, Any]] = []
    download(http.url("/data.bin"), dest, DATA_SHA,
             progress=lambda done, total: calls.append((done, total)))
    assert dest.read_bytes() == DATA and _files(tmp_path) == ["model.pth"]
    assert [r["range"] for r in http.requests] == ["bytes=400000-"]
    assert calls[0] == (400_000, len(DATA)) and calls[-1] == (len(DATA), len(DATA))


def test_complete_partial_file_needs_no_request(http: Any, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    Path(f"{dest}.part").write_bytes(DATA)  # a process killed just before the rename
    download(http.url("/data.bin"), dest, DATA_SHA)
    assert dest.read_bytes() == DATA and _files(tmp_path) == ["model.pth"]
    assert http.requests == []


def test_stale_partial_file_is_discarded_and_restarted(http: Any, tmp_path: Path) -> None:
    dest = tmp_path / "model.pth"
    Path(f"{dest}.part").write_bytes(b"\0" * 400_000)  # not a prefix of the real file
    download(http.url("/data.bin"), dest, DATA_SHA)
    assert dest.read_bytes() == DATA and _files(tmp_path) == ["model.pth"]
    assert [r["range"] for r in http.requests] == ["bytes=400000-", None]


def test_server_ignoring_range_restarts_from_zero(http: Any, tmp_path: Path) -> None:
    http.routes["/norange.bin"] = {"data": DATA, "range": False}
    dest = tmp_path / "model.pth"
    Path(f"{dest}.part").write_bytes(DATA[:400_000])
    download(http.url("/norange.bin"), dest, DATA_SHA)
    assert dest.read_bytes() == DATA and len(http.requests) == 1


def test_keep_partial_then_resume(http: Any, tmp_path: Path) -> None:
    http.routes["/flaky.bin"] = {"data": DATA, "cut": 700_000}
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadIntegrityError, match="truncated"):
        download(http.url("/flaky.bin"), dest, DATA_SHA, keep_partial=True)
    # A truncation broke off a transfer: with keep_partial its prefix is kept (issue 14,
    # item 13: the documented behaviour) and the next call resumes from it.
    kept = Path(f"{dest}.part")
    assert _files(tmp_path) == ["model.pth.part"] and kept.read_bytes() == DATA[:700_000]
    http.requests.clear()
    download(http.url("/data.bin"), dest, DATA_SHA)
    assert dest.read_bytes() == DATA and _files(tmp_path) == ["model.pth"]
    assert [r["range"] for r in http.requests] == ["bytes=700000-"]
    dest.unlink()
    # Without keep_partial a truncation leaves nothing.
    with pytest.raises(DownloadIntegrityError, match="truncated"):
        download(http.url("/flaky.bin"), dest, DATA_SHA)
    assert _files(tmp_path) == []
    seen: list[int] = []
    with pytest.raises(DownloadCancelled):
        download(http.url("/data.bin"), dest, DATA_SHA, keep_partial=True,
                 progress=lambda done, total: seen.append(done), stop=lambda: seen[-1] > 0)
    assert _files(tmp_path) == ["model.pth.part"] and kept.read_bytes() == DATA[:seen[-1]]
    http.requests.clear()
    download(http.url("/data.bin"), dest, DATA_SHA)
    assert dest.read_bytes() == DATA and _files(tmp_path) == ["model.pth"]
    assert [r["range"] for r in http.requests] == [f"bytes={seen[-1]}-"]


def test_proxy_from_environment_is_used(http: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Our server doubles as the proxy: the request arrives in absolute form for another host.
    monkeypatch.setenv("http_proxy", f"http://{http.address}")
    dest = tmp_path / "model.pth"
    download("http://models.invalid/data.bin", dest, DATA_SHA)
    assert dest.read_bytes() == DATA
    assert http.requests[-1]["raw"] == "http://models.invalid/data.bin"


def test_file_url_and_bad_arguments(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(DATA)
    dest = tmp_path / "out" / "model.pth"
    download(source.as_uri(), dest, DATA_SHA)
    assert dest.read_bytes() == DATA
    with pytest.raises(SGPSAMError, match="64-character hex SHA-256"):
        download(source.as_uri(), tmp_path / "x.pth", "abc")
    with pytest.raises(DownloadError, match="is a folder"):
        download(source.as_uri(), tmp_path / "out", DATA_SHA)


# ------------------------------------------------------------------------- download_model
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real (random) checkpoint of the ``tiny`` preset."""
    import torch

    from SGPSAMLib.build import build_model, save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(build_model("tiny"), tmp_path_factory.mktemp("src") / "tiny.pth",
                           metadata={"trained_on": "nothing (download test)"})
    return path.read_bytes()


@pytest.fixture()
def fake_model(http: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               tiny_checkpoint: bytes) -> models.ModelInfo:
    """A known model 'tiny_test' served by the local server: a real tiny checkpoint."""
    data = tiny_checkpoint
    http.routes["/tiny.pth"] = {"data": data}
    info = models.ModelInfo(
        name="tiny_test", title="Tiny test model", filename="tiny_test.pth",
        url=http.url("/tiny.pth"), sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data), licence="Test-Licence-1.0", licence_url="https://example.org/l",
        preset="tiny")
    monkeypatch.setitem(models.KNOWN_MODELS, "tiny_test", info)
    monkeypatch.setenv("SGPSAM_CACHE_DIR", str(tmp_path / "cache"))
    return info


def test_download_model_requires_consent(fake_model: models.ModelInfo, tmp_path: Path,
                                         http: Any) -> None:
    with pytest.raises(ConsentRequired) as info:
        download_model("tiny_test", consent=False)
    assert "Test-Licence-1.0" in str(info.value) and "https://example.org/l" in str(info.value)
    assert http.requests == [] and not (tmp_path / "cache").exists()
    # The real entry: refused before any network access, naming its licence and URL.
    with pytest.raises(ConsentRequired, match="Apache-2.0.*huggingface.co/blueyo0/SAM-Med3D"):
        download_model("sam_med3d_turbo", consent=False)
    with pytest.raises(SGPSAMError, match="unknown model 'nope'"):
        download_model("nope", consent=True)


def test_download_model_verifies_and_skips_when_present(fake_model: models.ModelInfo,
                                                        http: Any) -> None:
    path = download_model("tiny_test", consent=True)
    assert path == models.cache_dir() / "tiny_test.pth"
    assert Path(f"{path}.sha256").is_file()
    assert models.resolve_model("tiny_test") == path
    assert download_model("tiny_test", consent=False) == path  # present: no consent needed
    assert len(http.requests) == 1
    download_model("tiny_test", consent=True, force=True)
    assert len(http.requests) == 2


def test_cli_download_then_load(fake_model: models.ModelInfo, http: Any, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    from SGPSAMLib.build import load_model

    target = tmp_path / "elsewhere"
    assert main(["download", "tiny_test", "--yes", "--json", "--cache-dir", str(target)]) == 0
    record = json.loads(capsys.readouterr().out)
    path = Path(record["path"])
    assert path == target / "tiny_test.pth" and record["downloaded"] is True
    assert record["sha256"] == fake_model.sha256 and record["licence"] == "Test-Licence-1.0"
    model = load_model(path)
    assert model.config.preset == "tiny"
    assert model.checkpoint_metadata["trained_on"] == "nothing (download test)"
    assert _files(target) == ["tiny_test.pth", "tiny_test.pth.sha256"]

    assert main(["download", "tiny_test", "--json", "--cache-dir", str(target)]) == 0
    assert json.loads(capsys.readouterr().out)["downloaded"] is False
    assert len(http.requests) == 1


def test_cli_download_asks_on_a_terminal(fake_model: models.ModelInfo, http: Any,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert main(["download", "tiny_test"]) == 1
    err = capsys.readouterr().err
    assert "Test-Licence-1.0" in err and "[y/N]" in err and "not downloaded" in err
    assert http.requests == []
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert main(["download", "tiny_test"]) == 0
    assert "downloaded and verified" in capsys.readouterr().out
    assert models.cached_model_path("tiny_test") is not None


def test_cli_download_refuses_without_terminal_or_yes(fake_model: models.ModelInfo, http: Any,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["download", "tiny_test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sgpsam: error: ") and "--yes" in err and "Test-Licence-1.0" in err
    assert http.requests == [] and not (tmp_path / "cache" / "tiny_test.pth").exists()
    assert main(["download", "no_such_model", "--yes"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_cli_download_failure_is_one_line(fake_model: models.ModelInfo, http: Any,
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "tiny_test", "--yes", "--url", http.url("/gone.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 404" in err and http.url("/gone.pth") in err
    assert _files(tmp_path / "cache") == []


# ------------------------------------------------------------------------------------------------
# Planted partial files (issue 14, item 12) and --keep-partial (item 13).

def test_a_symlink_planted_at_the_partial_path_is_never_followed(http: Any,
                                                                tmp_path: Path) -> None:
    """Someone who can write the cache plants <dest>.part -> a file of the user elsewhere; the
    download removes the link and writes only inside the cache, the victim is untouched."""
    cache, outside = tmp_path / "cache", tmp_path / "home"
    cache.mkdir()
    outside.mkdir()
    victim = outside / "thesis.txt"
    victim.write_bytes(b"years of work")
    dest = cache / "model.pth"
    Path(f"{dest}.part").symlink_to(victim)
    download(http.url("/data.bin"), dest, DATA_SHA)
    assert victim.read_bytes() == b"years of work"
    assert dest.read_bytes() == DATA and not dest.is_symlink() and _files(cache) == ["model.pth"]
    # A dangling link (to a file that does not exist yet) is not created through either.
    Path(f"{dest}.part").symlink_to(outside / "new.txt")
    download(http.url("/data.bin"), dest, DATA_SHA)
    assert not (outside / "new.txt").exists() and _files(outside) == ["thesis.txt"]
    # Nor with a truncated transfer and --keep-partial.
    http.routes["/short.bin"] = {"data": DATA, "cut": 600_000}
    Path(f"{dest}.part").symlink_to(victim)
    with pytest.raises(DownloadIntegrityError, match="truncated"):
        download(http.url("/short.bin"), dest, DATA_SHA, keep_partial=True)
    assert victim.read_bytes() == b"years of work"
    kept = Path(f"{dest}.part")
    assert not kept.is_symlink() and kept.read_bytes() == DATA[:600_000]


def test_a_hard_link_or_folder_at_the_partial_path_is_refused(http: Any,
                                                              tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / "victim.bin"
    victim.write_bytes(DATA[:1000])
    dest = cache / "model.pth"
    os.link(victim, f"{dest}.part")  # the same file under two names: writing it writes victim
    with pytest.raises(DownloadError, match="hard links"):
        download(http.url("/data.bin"), dest, DATA_SHA)
    assert victim.read_bytes() == DATA[:1000] and http.requests == []
    Path(f"{dest}.part").unlink()
    Path(f"{dest}.part").mkdir()
    with pytest.raises(DownloadError, match="not a plain file"):
        download(http.url("/data.bin"), dest, DATA_SHA)


def test_cli_download_with_a_planted_link(fake_model: models.ModelInfo, http: Any,
                                          tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    victim = tmp_path / ".bashrc"
    victim.write_text("alias ls='ls --color'\n")
    (cache / "tiny_test.pth.part").symlink_to(victim)
    assert main(["download", "tiny_test", "--yes"]) == 0
    assert victim.read_text() == "alias ls='ls --color'\n"
    assert _files(cache) == ["tiny_test.pth", "tiny_test.pth.sha256"]


def test_cli_keep_partial_keeps_a_truncated_transfer(fake_model: models.ModelInfo, http: Any,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     tiny_checkpoint: bytes) -> None:
    """Item 13: `--keep-partial` keeps what a truncated transfer received (as documented);
    the next run resumes it with a Range request and verifies the whole file."""
    http.routes["/cut.pth"] = {"data": tiny_checkpoint, "cut": 5000}
    url = http.url("/cut.pth")
    assert main(["download", "tiny_test", "--yes", "--keep-partial", "--url", url]) == 2
    assert "truncated transfer" in capsys.readouterr().err
    part = tmp_path / "cache" / "tiny_test.pth.part"
    assert part.read_bytes() == tiny_checkpoint[:5000]
    http.requests.clear()
    assert main(["download", "tiny_test", "--yes"]) == 0
    assert [r["range"] for r in http.requests] == ["bytes=5000-"]
    assert _files(tmp_path / "cache") == ["tiny_test.pth", "tiny_test.pth.sha256"]
    assert main(["download", "tiny_test", "--yes", "--url", url]) == 0  # present: no transfer
    assert main(["download", "tiny_test", "--yes", "--force", "--url", url]) == 2
    assert _files(tmp_path / "cache") == ["tiny_test.pth", "tiny_test.pth.sha256"]
