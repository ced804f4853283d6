"""Model registry: known names, cache folder, verification records, resolve_model errors."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from SGPSAMLib import models
from SGPSAMLib.errors import CheckpointError, SGPSAMError

CONTENT = b"pretend checkpoint " * 1000
CONTENT_SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Cache in tmp, no demo model from the environment or the repository, no HF mirror."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SGPSAM_CACHE_DIR", str(cache))
    monkeypatch.delenv("SGPSAM_DEMO_MODEL", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(models, "_BUNDLED_DIR", tmp_path / "root" / "SGPSAMLib" / "resources")
    return cache


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> models.ModelInfo:
    info = models.ModelInfo(
        name="fake", title="Fake", filename="fake.pth", url="https://example.org/fake.pth",
        sha256=CONTENT_SHA, size_bytes=len(CONTENT), licence="MIT",
        licence_url="https://example.org/licence", preset="tiny")
    monkeypatch.setitem(models.KNOWN_MODELS, "fake", info)
    return info


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = models.sha256_file

    def counting(path: os.PathLike) -> str:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(models, "sha256_file", counting)
    return calls


def test_registry_entries() -> None:
    from SGPSAMLib.build import PRESETS

    assert list(models.KNOWN_MODELS) == ["demo", "sam_med3d_turbo"]
    turbo = models.KNOWN_MODELS["sam_med3d_turbo"]
    assert turbo.url == ("https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/"
                         "sam_med3d_turbo.pth")
    assert turbo.sha256 == "899a46d04d3b70f723282ceb489149373558bf0aaba389a346f5ab57da5cdd3c"
    assert turbo.filename == "sam_med3d_turbo.pth" and turbo.licence == "Apache-2.0"
    assert turbo.downloadable and turbo.preset == "sam_med3d"
    demo = models.KNOWN_MODELS["demo"]
    assert demo.url is None and not demo.downloadable and demo.filename == "sgpsam_demo.pt"
    assert all(info.preset in PRESETS and info.name == name
               for name, info in models.KNOWN_MODELS.items())
    text = turbo.licence_text()
    assert "Apache-2.0" in text and turbo.licence_url in text and "402 MB" in text
    with pytest.raises(AttributeError):
        turbo.url = "http://elsewhere"  # type: ignore[misc]


def test_cache_dir_from_environment_and_default(isolated: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert not isolated.exists()
    assert models.cache_dir(create=False) == isolated and not isolated.exists()
    assert models.cache_dir() == isolated and isolated.is_dir()
    monkeypatch.delenv("SGPSAM_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir(create=False) == tmp_path / "home" / ".cache" / "sgpsam"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir(create=False) == tmp_path / "xdg" / "sgpsam"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SGPSAM_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(SGPSAMError, match="cannot create the model cache folder"):
        models.cache_dir()


def test_hf_endpoint_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    turbo = models.KNOWN_MODELS["sam_med3d_turbo"]
    assert models.model_url(turbo) == turbo.url
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.com/")
    assert models.model_url(turbo) == ("https://hf-mirror.com/blueyo0/SAM-Med3D/resolve/main/"
                                       "sam_med3d_turbo.pth")


def test_resolve_model_not_downloaded_says_how(isolated: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        models.resolve_model("sam_med3d_turbo")
    message = str(info.value)
    assert "model 'sam_med3d_turbo' is not downloaded yet" in message
    assert "run `sgpsam download sam_med3d_turbo`" in message
    assert str(isolated) in message and "Apache-2.0" in message


def test_resolve_model_paths(tmp_path: Path) -> None:
    checkpoint = tmp_path / "mine.pth"
    checkpoint.write_bytes(b"x")
    assert models.resolve_model(str(checkpoint)) == checkpoint
    assert models.resolve_model(checkpoint) == checkpoint
    with pytest.raises(CheckpointError, match="absent.pth: checkpoint file not found, and not a "
                                              "known model name \\(demo, sam_med3d_turbo\\)"):
        models.resolve_model(str(tmp_path / "absent.pth"))
    with pytest.raises(CheckpointError, match="is a folder"):
        models.resolve_model(str(tmp_path))


def test_demo_model_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.bundled_model_path() is None
    with pytest.raises(CheckpointError, match="model 'demo' is not installed: expected .*"
                                              "sgpsam_demo.pt"):
        models.resolve_model("demo")
    # Package data: SGPSAMLib/resources/ in a checkout, a wheel and the Slicer extension alike.
    bundled = tmp_path / "root" / "SGPSAMLib" / "resources" / "sgpsam_demo.pt"
    bundled.parent.mkdir(parents=True)
    bundled.write_bytes(b"demo")
    assert models.bundled_model_path() == bundled == models.resolve_model("demo")
    assert models.model_status("demo")["state"] == "bundled"
    # The environment variable wins; a wrong one is ignored.
    other = tmp_path / "other_demo.pt"
    other.write_bytes(b"other")
    monkeypatch.setenv("SGPSAM_DEMO_MODEL", str(other))
    assert models.resolve_model("demo") == other
    monkeypatch.setenv("SGPSAM_DEMO_MODEL", str(tmp_path / "absent.pt"))
    assert models.bundled_model_path() == bundled


def test_verified_record_avoids_rehashing(fake: models.ModelInfo, isolated: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.cached_model_path("fake") is None
    path = models.cache_dir() / "fake.pth"
    path.write_bytes(CONTENT)  # copied in by hand: hashed once, then recorded
    hashes = _count_hashes(monkeypatch)
    assert models.model_status("fake")["state"] == "unverified"
    assert hashes == []  # listing does not hash
    assert models.cached_model_path("fake") == path and len(hashes) == 1
    record = json.loads(Path(f"{path}.sha256").read_text())
    assert record["sha256"] == CONTENT_SHA and record["size"] == len(CONTENT)
    assert models.resolve_model("fake") == path
    assert models.model_status("fake")["state"] == "downloaded"
    assert len(hashes) == 1  # trusted from the record (same size and mtime)
    assert models.cached_model_path("fake", verify=True) == path and len(hashes) == 2


def test_tampering_is_found(fake: models.ModelInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    path = models.cache_dir() / "fake.pth"
    path.write_bytes(CONTENT)
    models.write_verified_marker(path, CONTENT_SHA)
    stat = path.stat()
    # Same size, same mtime: only verify=True notices.
    path.write_bytes(CONTENT[:-1] + b"X")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert models.cached_model_path("fake") == path
    assert models.cached_model_path("fake", verify=True) is None
    with pytest.raises(CheckpointError, match="does not match the published SHA-256.*"
                                              "sgpsam download fake --force"):
        models.resolve_model("fake", verify=True)
    # A changed mtime makes the record stale: hashed again and rejected.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert models.cached_model_path("fake") is None
    assert models.model_status("fake")["state"] == "unverified"
    assert models.model_status("fake", verify=True)["state"] == "corrupt"


def test_unknown_names() -> None:
    with pytest.raises(CheckpointError, match="unknown model 'nope'; known models: demo, "
                                              "sam_med3d_turbo"):
        models.cached_model_path("nope")


def test_cli_models_json_lists_exactly_the_known_models(
        isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from SGPSAMLib.cli import main

    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listing["models"]] == list(models.KNOWN_MODELS)
    assert listing["cache_dir"] == str(isolated)
    turbo = listing["models"][1]
    assert turbo["state"] == "missing" and turbo["present"] is False
    assert turbo["expected_path"] == str(isolated / "sam_med3d_turbo.pth")
    assert turbo["licence"] == "Apache-2.0" and turbo["sha256"].startswith("899a46d0")
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "sam_med3d_turbo" in text and "sgpsam download sam_med3d_turbo" in text
