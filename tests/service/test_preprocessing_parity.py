"""What the service feeds a model is timm's evaluation transform: an image sent over REST and v2 BYTES
scores what the eager model scores on the transform of that image, for the interpolations and crop
ratios people train with, on landscape and portrait photos."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import niff
import niff_export

from .conftest import Photos, ServerProcess

RECIPES = {
    "bilinear-0875": {"interpolation": "bilinear", "crop_pct": 0.875},
    "bicubic-0875": {"interpolation": "bicubic", "crop_pct": 0.875},
    "bilinear-095": {"interpolation": "bilinear", "crop_pct": 0.95, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)},
    "bicubic-095": {"interpolation": "bicubic", "crop_pct": 0.95},
}
SIZE = 32
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def timm_eval_transform(image: Image.Image, recipe: dict) -> torch.Tensor:
    """Resize(floor(S / crop_pct), interpolation) + CenterCrop(S) + ToTensor + Normalize, as torchvision does it."""
    short = math.floor(SIZE / recipe["crop_pct"])
    width, height = image.size
    if width <= height:
        new_width, new_height = short, int(short * height / width)
    else:
        new_width, new_height = int(short * width / height), short
    resized = image.resize((new_width, new_height), PIL_FILTERS[recipe["interpolation"]])
    top, left = round((new_height - SIZE) / 2.0), round((new_width - SIZE) / 2.0)
    tensor = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).float() / 255
    tensor = tensor[:, top : top + SIZE, left : left + SIZE]
    mean = torch.tensor(recipe.get("mean", niff.Preprocessing().mean)).view(3, 1, 1)
    std = torch.tensor(recipe.get("std", niff.Preprocessing().std)).view(3, 1, 1)
    return (tensor - mean) / std


@pytest.fixture(scope="module")
def eager() -> torch.nn.Module:
    torch.manual_seed(7)
    model = niff.create_model(
        "resnet18_split", num_classes=10, small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
    )
    return model.eval()


@pytest.fixture(scope="module")
def server(eager: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory, start_server) -> ServerProcess:
    repository = tmp_path_factory.mktemp("recipes")
    for name, recipe in RECIPES.items():
        niff_export.export_model(eager, SIZE, repository, name, formats=("onnx",), preprocessing=recipe)
    return start_server(repository)


@pytest.fixture(scope="module")
def images(photos: Photos) -> dict[str, bytes]:
    portrait = Image.fromarray(photos.arrays["flower"][:, 60:350])  # 290 wide, 427 high
    buffer = io.BytesIO()
    portrait.save(buffer, "PNG")
    return {"landscape": photos.jpeg["china"], "portrait": buffer.getvalue()}


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("photo", ["landscape", "portrait"])
def test_served_scores_match_eager_on_the_timm_transform(
    server: ServerProcess, eager: torch.nn.Module, images: dict[str, bytes], recipe: str, photo: str
) -> None:
    data = images[photo]
    with torch.no_grad():
        expected = eager(timm_eval_transform(Image.open(io.BytesIO(data)).convert("RGB"), RECIPES[recipe])[None])[0]
    expected = expected.double().numpy()
    with server.client() as client:
        rest = client.post(f"/v1/models/{recipe}:classify", content=data, params={"top_k": 10})
        body = {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}]
        }
        v2 = client.post(f"/v2/models/{recipe}/infer", content=json.dumps(body))
    assert rest.status_code == 200 and v2.status_code == 200, rest.text + v2.text
    outputs = {o["name"]: np.asarray(o["data"], dtype=np.float64) for o in v2.json()["outputs"]}
    logits = outputs["logits"]
    assert np.linalg.norm(logits - expected) <= 1e-4 * np.linalg.norm(expected)
    assert logits.argmax() == expected.argmax()
    probabilities = np.exp(expected - expected.max()) / np.exp(expected - expected.max()).sum()
    served = {c["index"]: c["probability"] for c in rest.json()["predictions"][0]["top_k"]}
    np.testing.assert_allclose([served[i] for i in range(10)], probabilities, rtol=1e-4, atol=1e-6)
    assert rest.json()["predictions"][0]["top_k"][0]["index"] == expected.argmax()


def test_recipes_are_recorded_and_reported(server: ServerProcess) -> None:
    with server.client() as client:
        detail = client.get("/v1/models/bicubic-095").json()
    assert detail["niff"]["preprocessing"]["interpolation"] == "bicubic"
    assert detail["niff"]["preprocessing"]["crop_pct"] == 0.95 and detail["niff"]["preprocessing"]["resize"] == 33


def test_the_gate_checks_the_pixels_the_service_feeds(photos: Photos) -> None:
    """The parity gate's photos are the service's preprocessing of the same JPEG files, bit for bit."""
    from niff_contract import Preprocessor
    from niff_export.images import sample_photos

    recipe = niff.Preprocessing(input_size=SIZE, crop_pct=0.875, interpolation="bicubic")
    gate = sample_photos(recipe).numpy()
    served = np.stack([Preprocessor(recipe)(photos.jpeg[name]) for name in ("china", "flower")])
    np.testing.assert_array_equal(gate, served)
