"""The embedded default model over HTTP: held-out digits sent as PNGs score what the eager model scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import niff
import niff_export
from niff import digits

from .conftest import classify_digits

BATCH = 15


@pytest.fixture(scope="module")
def digits_server(tmp_path_factory: pytest.TempPathFactory, start_server):
    repository = tmp_path_factory.mktemp("digits_models")
    niff_export.export_checkpoint(digits.DEFAULT_CHECKPOINT, digits.INPUT_SIZE, repository, name="digits")
    return start_server(repository, "--max-batch-size", str(BATCH))


def test_held_out_digits_over_http_match_the_eager_model(digits_server):
    _, _, images, labels = digits.load_split()
    model = niff.load_checkpoint(digits.DEFAULT_CHECKPOINT)
    spec = model.niff_spec.preprocessing
    eager = digits.predict(model, digits.to_tensor(images, spec.mean, spec.std)).numpy()
    served = classify_digits(digits_server, images, BATCH)
    assert len(served) == len(labels) == digits.HELD_OUT_SIZE
    http_accuracy, eager_accuracy = (served == labels).mean(), (eager == labels).mean()
    assert http_accuracy >= 0.97
    assert http_accuracy == eager_accuracy == digits.SHIPPED_HELD_OUT_ACCURACY
    assert np.array_equal(served, eager)


@pytest.mark.parametrize("digit", range(10))
def test_shipped_example_images(digits_server, digit):
    path = Path(__file__).resolve().parents[2] / "examples" / "digits" / f"digit-{digit}.png"
    with digits_server.client() as client:
        response = client.post("/v1/models/digits:classify", content=path.read_bytes(), params={"top_k": 3})
    assert response.status_code == 200
    best = response.json()["predictions"][0]["top_k"][0]
    assert best["label"] == str(digit) and best["index"] == digit and best["probability"] > 0.5
