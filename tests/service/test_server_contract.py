"""The model folder as the server reads it: batching values from config.pbtxt (settings override them),
Triton's platform from the same source, and folders of the previous format still served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from niff_contract import parse_config

from .conftest import TINY, Photos


@pytest.fixture(scope="module")
def mixed_repository(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as written today, and the same model as a format-1 folder (named 'old')."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(repository / TINY, root / TINY)
    old = root / "old"
    shutil.copytree(repository / TINY, old)
    manifest = json.loads((old / "niff.json").read_text())
    manifest.update(format_version=1, name="old")
    (old / "niff.json").write_text(json.dumps(manifest))
    (old / "config.pbtxt").write_text((old / "config.pbtxt").read_text().replace(f'"{TINY}"', '"old"'))
    return root


def test_batching_and_platform_come_from_the_folder(start_server, mixed_repository: Path, photos: Photos) -> None:
    server = start_server(mixed_repository)
    config = parse_config((mixed_repository / TINY / "config.pbtxt").read_text())
    with server.client() as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        metadata = client.get(f"/v2/models/{TINY}").json()
        old = client.post("/v1/models/old:classify", content=photos.jpeg["flower"])
    assert models[TINY]["max_batch_size"] == config.max_batch_size
    assert models[TINY]["max_batch_delay_ms"] == config.dynamic_batching.max_queue_delay_microseconds / 1000
    assert metadata["platform"] == config.platform
    assert old.status_code == 200, old.text  # format 1 still serves


def test_settings_override_the_folders_batching(start_server, mixed_repository: Path) -> None:
    server = start_server(mixed_repository, "--max-batch-size", "4", "--max-batch-delay-ms", "1.5")
    with server.client() as client:
        models = client.get("/v1/models").json()["models"]
    assert {(m["max_batch_size"], m["max_batch_delay_ms"]) for m in models} == {(4, 1.5)}
