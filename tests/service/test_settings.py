"""Settings: every field is NIFF_<FIELD> in the environment, and bad values are refused with their name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from niff_serve.core.settings import Settings, unknown_env_names
from niff_serve.process.cli import load_settings

pytestmark = pytest.mark.fast

FIELDS = {
    "model_repository", "backend", "device", "max_batch_size", "max_batch_delay_ms", "max_queue_size",
    "request_timeout_s", "max_upload_bytes", "max_image_pixels", "api_key", "host", "port", "log_level",
}  # fmt: skip


def test_the_agreed_fields_exist_with_their_defaults() -> None:
    assert set(Settings.model_fields) >= FIELDS
    settings = Settings(model_repository=Path("/models"))
    assert (settings.host, settings.port, settings.backend, settings.device) == ("127.0.0.1", 8000, "auto", "auto")
    assert settings.api_key is None and settings.log_level == "info"


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "NIFF_MODEL_REPOSITORY": "/srv/models",
        "NIFF_BACKEND": "TorchScript",
        "NIFF_DEVICE": "cuda",
        "NIFF_MAX_BATCH_SIZE": "32",
        "NIFF_MAX_BATCH_DELAY_MS": "2.5",
        "NIFF_MAX_QUEUE_SIZE": "64",
        "NIFF_REQUEST_TIMEOUT_S": "9",
        "NIFF_MAX_UPLOAD_BYTES": "1000",
        "NIFF_MAX_IMAGE_PIXELS": "5000",
        "NIFF_API_KEY": "k",
        "NIFF_HOST": "0.0.0.0",
        "NIFF_PORT": "9000",
        "NIFF_LOG_LEVEL": "WARNING",
        "NIFF_SHUTDOWN_DELAY_S": "3",
        "NIFF_MAX_BATCH": "typo",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.model_repository == Path("/srv/models")
    assert (settings.backend, settings.device, settings.log_level) == ("torchscript", "cuda", "warning")
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.max_queue_size) == (32, 2.5, 64)
    assert (settings.request_timeout_s, settings.max_upload_bytes, settings.max_image_pixels) == (9, 1000, 5000)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k" and "'k'" not in repr(settings)
    assert (settings.host, settings.port, settings.shutdown_delay_s) == ("0.0.0.0", 9000, 3)
    assert unknown_env_names() == ["NIFF_MAX_BATCH"]
    assert Settings(max_batch_size=8).max_batch_size == 8  # explicit values (the command line) win


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_delay_ms": -1}, "max_batch_delay_ms"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
        ({"port": 70000}, "port"),
        ({"backend": "tensorrt"}, "backend"),
        ({"device": "tpu"}, "device"),
        ({"log_level": "loud"}, "log_level"),
        ({"max_upload_bytes": 0}, "max_upload_bytes"),
    ],
)
def test_invalid_values_name_their_field(changes: dict, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(model_repository=Path("/models"), **changes)
    assert [e["loc"] for e in error.value.errors()] == [(field,)]


def test_empty_api_key_means_no_auth_and_queue_must_hold_a_batch() -> None:
    assert Settings(model_repository=Path("/m"), api_key="").api_key is None
    with pytest.raises(ValidationError, match=r"max_queue_size \(4\) must be at least max_batch_size \(8\)"):
        Settings(model_repository=Path("/m"), max_batch_size=8, max_queue_size=4)


def test_a_misspelt_setting_is_named_when_settings_are_invalid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.upper().startswith("NIFF_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NIFF_MODEL_REPO", "/srv/models")
    with pytest.raises(SystemExit) as exit_info:
        load_settings([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "niff-serve: error: invalid settings: --model-repository / NIFF_MODEL_REPOSITORY: Field required; "
        "NIFF_MODEL_REPO is not a known setting (did you mean NIFF_MODEL_REPOSITORY?)\n"
    )
