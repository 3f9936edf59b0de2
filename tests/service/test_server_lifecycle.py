"""Start-up and shutdown of the real process: SIGTERM drains in-flight work; bad configuration fails cleanly."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from niff_contract import sha256_file
from niff_serve.cli import main

from .conftest import MINI, TINY, Photos, Reference, ServerProcess, classify, free_port


def test_sigterm_finishes_in_flight_requests_then_exits(
    tiny_only_repository: Path, tmp_path: Path, photos: Photos, reference: Reference
) -> None:
    server = ServerProcess(
        tiny_only_repository,
        tmp_path / "server.log",
        *("--backend", "torchscript", "--max-batch-size", "8", "--max-queue-size", "16"),
        *("--max-batch-delay-ms", "1500", "--shutdown-delay-s", "2"),
    )
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/v1/models").json()["models"][0]["backend"] == "torchscript"
        datas = [photos.jpeg["china"], photos.jpeg["flower"]] * 3
        in_flight = server.in_background([classify(data) for data in datas])
        server.wait_for_metric("niff_queue_depth", len(datas), model=TINY)
        server.process.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=server.url) as client:
            ready = client.get("/v2/health/ready")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            assert client.get("/v2/health/live").status_code == 200
        # Not ready, yet still serving during the shutdown delay: a late request is answered too.
        datas.append(photos.encode("flower", "PNG"))
        in_flight += server.in_background([classify(datas[-1])])
        for data, future in zip(datas, in_flight, strict=True):
            response = future.result(60)
            assert response.status_code == 200, response.text
            top = response.json()["predictions"][0]["top_k"]
            np.testing.assert_allclose(
                [c["probability"] for c in top], np.sort(reference.probabilities(TINY, data))[::-1], atol=1e-5
            )
        assert server.process.wait(60) == -signal.SIGTERM  # uvicorn re-raises the signal once drained
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz")
        messages = [r["message"] for r in server.log_records()]
        assert messages.index("model warmed up") < messages.index("Application startup complete.")
        assert messages[-1].startswith("Finished server process") and "stopped" in messages
    finally:
        server.stop(signal.SIGKILL)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "niff_serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_invalid_settings_exit_with_one_line(repository: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "NIFF_MAX_BATCH_DELAY_MS": "soon"}
    result = _run_cli("--model-repository", str(repository), "--max-batch-size", "0", env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "niff-serve: error: invalid settings: --max-batch-size / NIFF_MAX_BATCH_SIZE: Input should be greater than "
        "or equal to 1; --max-batch-delay-ms / NIFF_MAX_BATCH_DELAY_MS: Input should be a valid number, unable to "
        "parse string as a number"
    ]


@pytest.mark.parametrize(
    ("rehash", "message"),
    [(False, "1/model.onnx does not match its sha256 in niff.json"), (True, "ONNX Runtime cannot load model.onnx")],
)
def test_model_that_cannot_load_stops_start_up(repository: Path, tmp_path: Path, rehash: bool, message: str) -> None:
    folder = Path(shutil.copytree(repository / MINI, tmp_path / MINI))
    (folder / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    if rehash:  # the file matches its recorded hash, and is still no model
        manifest = json.loads((folder / "niff.json").read_text())
        manifest["artifacts"]["onnx"]["sha256"] = sha256_file(folder / "1" / "model.onnx")
        (folder / "niff.json").write_text(json.dumps(manifest))
    result = _run_cli("--model-repository", str(tmp_path), "--port", str(free_port()))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"niff-serve: error: start-up failed: model 'mini': {message}")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-repository", "/no/such/folder"], "model repository '/no/such/folder' is not a directory"),
        (
            ["--max-queue-size", "2", "--max-batch-size", "4"],
            "invalid settings: max_queue_size (2) must be at least max_batch_size (4)",
        ),
        (["--backend", "torchscript"], "model 'mini': has no torchscript artifact for backend torchscript"),
        (["--grpc-port", "8000"], "invalid settings: grpc_port and port must differ (both are 8000)"),
    ],
)
def test_unusable_configuration_exits_2(
    repository: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-repository", str(repository), *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"niff-serve: error: {message}\n"


def test_broken_model_folder_is_named(repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(repository / TINY, tmp_path / TINY)
    manifest = json.loads((tmp_path / TINY / "niff.json").read_text())
    manifest["preprocessing"]["mean"] = [0.5]
    (tmp_path / TINY / "niff.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-repository", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"niff-serve: error: model folder '{tmp_path / TINY}': niff.json: preprocessing.mean")


def test_help_lists_every_option_with_its_env_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, env in (("--max-batch-delay-ms", "NIFF_MAX_BATCH_DELAY_MS"), ("--api-key", "NIFF_API_KEY")):
        assert option in text and f"env {env};" in text
