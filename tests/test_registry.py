"""The registry data file and `pull` against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from ddnm.models import load_network, load_registered
from ddnm.models.registry import (
    PACKAGED_WEIGHTS,
    RECORDED_HASHES,
    DownloadError,
    checkpoint_path,
    get_entry,
    load_registry,
    pull,
    verify,
)

REQUIRED = ("imagenet-256-uncond", "imagenet-256-cond", "celeba-hq-256", "ddnm-small-32")
MANIFEST_OF = {
    "imagenet-256-uncond": "manifest_guided_256_uncond.json",
    "imagenet-256-cond": "manifest_guided_256_cond.json",
    "imagenet-256-classifier": "manifest_guided_256_classifier.json",
    "celeba-hq-256": "manifest_ddpm_celeba_hq.json",
}


class FileServer(ThreadingHTTPServer):
    """Serves `payload` at every path, honours `Range: bytes=N-`, and can cut a transfer short
    after `cut_after` bytes (closing the connection mid-body)."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.payload = payload
        self.cut_after: int | None = None
        self.ranges: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/model.pt"


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
        payload = self.server.payload
        if start >= len(payload):
            self.send_response(416)
            self.end_headers()
            return
        body = payload[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut_after
        self.wfile.write(body if cut is None else body[:cut])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def payload() -> bytes:
    return np.random.default_rng(0).bytes(3 * 2**20 + 12345)


@pytest.fixture
def server(payload):
    httpd = FileServer(payload)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _entry(url: str, sha256: str | None, file: str = "model.pt"):
    return dataclasses.replace(get_entry("celeba-hq-256"), url=url, sha256=sha256, file=file)


def test_pull_downloads_and_verifies(server, payload, tmp_path):
    entry = _entry(server.url, hashlib.sha256(payload).hexdigest())
    path = pull(entry, tmp_path, progress=False)
    assert path == tmp_path / "model.pt"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert verify(entry, tmp_path) == hashlib.sha256(payload).hexdigest()
    pull(entry, tmp_path, progress=False)  # present and valid: no second transfer
    assert server.ranges == [None]


def test_hash_mismatch_is_rejected_and_nothing_left_behind(server, tmp_path):
    with pytest.raises(ValueError, match="expected 0000"):
        pull(_entry(server.url, "0" * 64), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_a_range_request(server, payload, tmp_path):
    entry = _entry(server.url, hashlib.sha256(payload).hexdigest())
    server.cut_after = 2**20 + 7
    with pytest.raises(DownloadError, match=server.url):
        pull(entry, tmp_path, progress=False)
    part = tmp_path / "model.pt.part"
    assert not (tmp_path / "model.pt").exists()
    assert part.stat().st_size == 2**20 + 7
    server.cut_after = None
    path = pull(entry, tmp_path, progress=False)
    assert server.ranges == [None, f"bytes={2**20 + 7}-"]
    assert path.read_bytes() == payload
    assert not part.exists()


def test_server_down_gives_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.pt"
    with pytest.raises(DownloadError) as info:
        pull(_entry(url, None), tmp_path, progress=False, timeout=5)
    message = str(info.value)
    assert url in message and str(tmp_path / "model.pt") in message
    assert not (tmp_path / "model.pt").exists()


def test_unknown_hash_is_recorded_on_first_download(server, payload, tmp_path):
    entry = _entry(server.url, None)
    with pytest.warns(UserWarning, match="no published SHA-256"):
        pull(entry, tmp_path, progress=False)
    recorded = json.loads((tmp_path / RECORDED_HASHES).read_text())
    assert recorded == {entry.name: hashlib.sha256(payload).hexdigest()}
    (tmp_path / "model.pt").write_bytes(payload[:-1] + b"x")
    with pytest.raises(ValueError, match="expected"):
        verify(entry, tmp_path)
    with pytest.warns(UserWarning, match="downloading it again"):
        pull(entry, tmp_path, progress=False)  # a corrupt file is replaced
    assert (tmp_path / "model.pt").read_bytes() == payload


def test_pulled_checkpoint_loads_through_load_registered(reference_dir, tmp_path):
    models = reference_dir / "models"
    config = json.loads((models / "guided_small_config.json").read_text())
    httpd = FileServer((models / "guided_small_state_dict.pt").read_bytes())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        entry = dataclasses.replace(
            get_entry("imagenet-256-uncond"),
            name="guided-small",
            config=config["create_model_kwargs"],
            file="guided_small.pt",
            url=httpd.url,
            sha256=config["state_dict_sha256"],
        )
        pull(entry, tmp_path, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    network, got_entry, sha256 = load_registered(entry, tmp_path)
    assert got_entry is entry and sha256 == config["state_dict_sha256"]
    io = np.load(models / "guided_small_io.npz")
    with torch.no_grad():
        out = network(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]))
    np.testing.assert_allclose(out.numpy(), io["out"], rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", sorted(MANIFEST_OF))
def test_registry_configs_build_the_manifest_architectures(reference_dir, name):
    entry = get_entry(name)
    manifest = json.loads((reference_dir / "manifests" / MANIFEST_OF[name]).read_text())
    with torch.device("meta"):
        net = load_network(None, arch=entry.arch, config=entry.config)
    assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == [
        (k, shape) for k, shape, _ in manifest["params"]
    ]
    assert entry.image_size == manifest.get("image_size", 256)
    assert entry.class_conditional == (name != "imagenet-256-uncond" and "celeba" not in name)


def test_registry_entries_are_complete():
    registry = load_registry()
    assert set(REQUIRED) <= set(registry)
    for entry in registry.values():
        assert entry.license and entry.schedule["kind"] == "linear"
        assert entry.classifier is None or registry[entry.classifier].arch == "adm_classifier"
        if not entry.packaged:
            assert entry.url is not None and entry.url.startswith("https://")
    small = registry["ddnm-small-32"]
    assert small.packaged and checkpoint_path(small, None).parent == PACKAGED_WEIGHTS
    with torch.device("meta"):
        net = load_network(None, arch=small.arch, config=small.config)
    assert net.image_size == small.image_size == 32
    with pytest.raises(ValueError, match="model must be one of"):
        get_entry("no-such-model")


def test_cli_reads_the_model_dir_from_the_environment(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DDNM_MODEL_DIR", str(tmp_path))
    assert main(["models", "path", "celeba-hq-256"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "celeba_hq.ckpt")
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in REQUIRED) and str(tmp_path) in listing
    assert main(["models", "verify", "celeba-hq-256"]) == 2
    error = capsys.readouterr().err
    assert "celeba_hq.ckpt" in error and "https://" in error and str(tmp_path) in error
    assert main(["models", "path", "--model-dir", "/elsewhere", "celeba-hq-256"]) == 0
    assert Path(capsys.readouterr().out.strip()) == Path("/elsewhere/celeba_hq.ckpt")
