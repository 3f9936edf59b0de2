"""A model folder with two versions (niff-export --model-version 2 beside 1): a real niff-serve starts on it and
serves the version niff.json describes, while config.pbtxt lists both for Triton."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import niff
import niff_export
from niff_contract import parse_config

from .conftest import ServerProcess

NAME = "pets"
SIZE = 16
LABELS = ["cat", "dog", "bird", "fish"]


def export_version(repository: Path, version: int) -> Path:
    """The tiny model with weights of its own per version (another training run), as version ``version``."""
    torch.manual_seed(version)
    model = niff.create_model(
        "resnet18_split", num_classes=len(LABELS), small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
    )
    return niff_export.export_model(
        model, SIZE, repository, NAME, formats=("onnx",), labels=LABELS, version=version
    ).path


def logits(model_file: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": batch})[0]


def test_niff_serve_serves_the_version_niff_json_describes(
    start_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("two_versions")
    folder = export_version(root, 1)
    export_version(root, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "config.pbtxt", "labels.txt", "niff.json"]
    assert list(parse_config((folder / "config.pbtxt").read_text()).version_policy.specific.versions) == [1, 2]
    server = start_server(root, "--grpc-port", "0")
    with server.client() as client:
        assert client.get(f"/v2/models/{NAME}/versions/2/ready").status_code == 200
        assert client.get(f"/v2/models/{NAME}/ready").status_code == 200
        other = client.get(f"/v2/models/{NAME}/versions/1/ready")
        assert other.status_code == 404
        assert other.json()["error"] == f"model {NAME!r} has no version '1'; it serves version 2"
        assert client.get(f"/v2/models/{NAME}").json()["versions"] == ["2"]
        # config.pbtxt lists both for Triton; the served configuration names the one version served here.
        assert client.get(f"/v2/models/{NAME}/config").json()["version_policy"] == {"specific": {"versions": [2]}}
    batch = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32)
    tc = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = tc.infer(NAME, [tensor], model_version="2")
        assert result.get_response()["model_version"] == "2"
        served = result.as_numpy("logits")
        np.testing.assert_allclose(served, logits(folder / "2" / "model.onnx", batch), rtol=1e-5, atol=1e-5)
        assert not np.allclose(served, logits(folder / "1" / "model.onnx", batch), rtol=1e-3, atol=1e-3)
        with pytest.raises(InferenceServerException, match="no version '1'"):
            tc.infer(NAME, [tensor], model_version="1")
    finally:
        tc.close()
