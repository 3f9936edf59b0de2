"""A model folder built without torch: a tiny ONNX classifier written with ``onnx.helper`` and the contract's
records, for the tests that need a real model folder but not torch (the fast tier, the deploy contract).

The model averages each colour channel and maps the three means linearly to the classes: small, exact in
float32, and sensitive to every pixel the preprocessing produces, so a wrong crop, scale or normalization
changes its answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from niff_contract import (
    FORMAT_VERSION,
    ArtifactRecord,
    Manifest,
    Preprocessing,
    TensorSpec,
    config_text,
    labels_text,
    model_config,
    sha256_file,
)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def weights(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's [3, classes] weights and [classes] bias."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, classes)).astype(np.float32) * 4, rng.normal(size=classes).astype(np.float32)


def logits(batch: np.ndarray, classes: int, seed: int = 0) -> np.ndarray:
    """What the model answers for a preprocessed [N, 3, S, S] batch, computed with numpy."""
    weight, bias = weights(classes, seed)
    return batch.mean(axis=(2, 3), dtype=np.float64).astype(np.float32) @ weight + bias


def onnx_model(size: int, classes: int, seed: int = 0) -> onnx.ModelProto:
    weight, bias = weights(classes, seed)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["means"], keepdims=0),
            helper.make_node("MatMul", ["means", "weight"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def write_folder(
    repository: Path,
    name: str,
    *,
    size: int = 16,
    labels: tuple[str, ...] = DIGITS,
    preprocessing: Preprocessing | None = None,
    max_batch_size: int = 8,
    version: int = 1,
    seed: int = 0,
) -> Path:
    """``repository/name``: config.pbtxt, niff.json, labels.txt and ``version``/model.onnx."""
    folder = repository / name
    artifact = folder / str(version) / "model.onnx"
    artifact.parent.mkdir(parents=True)
    onnx.save(onnx_model(size, len(labels), seed), artifact)
    (folder / "labels.txt").write_text(labels_text(labels))
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        version=version,
        builder="tests/tiny_onnx.py",
        num_classes=len(labels),
        input=TensorSpec(name="input", shape=(3, size, size), layout="NCHW"),
        output=TensorSpec(name="logits", shape=(len(labels),)),
        preprocessing=(preprocessing or Preprocessing()).updated(input_size=size),
        labels_sha256=sha256_file(folder / "labels.txt"),
        max_batch_size=max_batch_size,
        artifacts={
            "onnx": ArtifactRecord(
                path=f"{version}/model.onnx", sha256=sha256_file(folder / str(version) / "model.onnx")
            )
        },
    )
    (folder / "niff.json").write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    (folder / "config.pbtxt").write_text(config_text(model_config(manifest)))
    return folder
