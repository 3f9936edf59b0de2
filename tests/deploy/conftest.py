"""Fixtures for the deployment checks; the readers they use live in deploy_support.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# The test modules import deploy_support by name (pytest runs with --import-mode=importlib, which
# puts no test folder on sys.path).
sys.path.insert(0, str(Path(__file__).parent))

from deploy_support import (
    ROOT,
    Dockerfile,
    parse_dockerfile,
    settings_class,
)


@pytest.fixture(scope="session")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(ROOT / "Dockerfile")


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, minimal model repository (docs/model-repository.md): one 4-class ONNX model at 32x32
    that averages each colour channel and mixes the three means into logits."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from niff_contract import (
        ArtifactRecord,
        Manifest,
        Preprocessing,
        TensorSpec,
        config_text,
        labels_text,
        model_config,
        sha256_file,
    )

    size, labels = 32, ["red", "green", "blue", "grey"]
    root = tmp_path_factory.mktemp("models")
    folder = root / "tiny"
    (folder / "1").mkdir(parents=True)
    weights = np.array([[1, 0, 0, 0.3], [0, 1, 0, 0.3], [0, 0, 1, 0.3]], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(labels)])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "1" / "model.onnx")
    manifest = Manifest(
        name="tiny",
        num_classes=len(labels),
        input=TensorSpec(name="input", shape=(3, size, size), layout="NCHW"),
        output=TensorSpec(name="logits", shape=(len(labels),)),
        preprocessing=Preprocessing(input_size=size, mean=(0.5,) * 3, std=(0.25,) * 3),
        max_batch_size=8,
        artifacts={"onnx": ArtifactRecord(path="1/model.onnx", sha256=sha256_file(folder / "1" / "model.onnx"))},
    )
    (folder / "labels.txt").write_text(labels_text(labels))
    (folder / "niff.json").write_text(manifest.to_json())
    (folder / "config.pbtxt").write_text(config_text(model_config(manifest)))
    return root


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app niff-serve builds, not started (nothing loaded), with an API key so that the tests see
    which paths stay open without one."""
    from niff_serve.process.serving import create_app

    repository = tmp_path_factory.mktemp("empty-repository")
    return create_app(settings_class()(model_repository=repository, api_key="deploy-test-key"))
