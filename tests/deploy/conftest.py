"""Fixtures for the deployment checks; the readers they use live in deploy_support.py."""

from __future__ import annotations

import json
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
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "niff.json").write_text(
        json.dumps(
            {
                "format_version": 1,
                "name": "tiny",
                "version": 1,
                "arch": None,
                "num_classes": len(labels),
                "input": {"name": "input", "dtype": "float32", "shape": [3, size, size], "layout": "NCHW"},
                "output": {"name": "logits", "dtype": "float32", "shape": [len(labels)]},
                "preprocessing": {
                    "input_size": size,
                    "resize": size + 4,
                    "mean": [0.5, 0.5, 0.5],
                    "std": [0.25, 0.25, 0.25],
                    "interpolation": "bilinear",
                },
                "labels_file": "labels.txt",
                "max_batch_size": 8,
                "artifacts": {"onnx": {"path": "1/model.onnx"}},
            }
        )
    )
    (folder / "config.pbtxt").write_text(
        'name: "tiny"\nmax_batch_size: 8\n'
        f'input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]\n'
        f'output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ {len(labels)} ] }} ]\n'
    )
    return root


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app niff-serve builds, not started (nothing loaded), with an API key so that the tests see
    which paths stay open without one."""
    from niff_serve.app import create_app

    repository = tmp_path_factory.mktemp("empty-repository")
    return create_app(settings_class()(model_repository=repository, api_key="deploy-test-key"))
