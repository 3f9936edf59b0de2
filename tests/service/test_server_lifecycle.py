"""Start-up and shutdown of the real process: SIGTERM drains in-flight work; bad configuration fails cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from polling import wait_until

from niff_contract import sha256_file
from niff_serve.core.errors import ConfigurationError
from niff_serve.core.settings import Settings
from niff_serve.process.cli import main
from niff_serve.process.workers import supervise

from .conftest import MINI, TINY, Photos, Reference, ServerProcess, classify, free_port


def test_sigterm_finishes_in_flight_requests_then_exits(
    tiny_only_repository: Path, tmp_path: Path, photos: Photos, reference: Reference
) -> None:
    """The first SIGTERM starts the not-ready delay (long here, so nothing below races it); a second one
    ends the delay: the server stops accepting, answers what is in flight, and exits."""
    server = ServerProcess(
        tiny_only_repository,
        tmp_path / "server.log",
        *("--backend", "torchscript", "--max-batch-size", "8", "--max-queue-size", "16"),
        *("--max-batch-delay-ms", "1500", "--shutdown-delay-s", "60"),
    )

    def assert_answers(datas: list[bytes], futures: list) -> None:
        for data, future in zip(datas, futures, strict=True):
            reference.assert_answers(TINY, data, future.result(60))

    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/v1/models").json()["models"][0]["backend"] == "torchscript"
        datas = [photos.jpeg["china"], photos.jpeg["flower"]] * 3
        in_flight = server.in_background([classify(data) for data in datas])
        server.wait_for_metric("niff_queue_depth", len(datas), model=TINY)
        server.process.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=server.url) as client:
            # The signal reaches the server a moment after it is sent.
            wait_until(lambda: client.get("/v2/health/ready").status_code == 503, "still ready after SIGTERM")
            assert client.get("/v2/health/ready").json()["ready"] is False
            assert client.get("/v2/health/live").status_code == 200
            model_ready = client.get(f"/v2/models/{TINY}/ready")
            assert model_ready.status_code == 503 and model_ready.json() == {"name": TINY, "ready": False}
        assert_answers(datas, in_flight)
        # Not ready, yet still serving during the shutdown delay: a late request is answered too, and it
        # is still in flight (waiting for its batch to fill) when the second SIGTERM ends the delay.
        late = [photos.encode("flower", "PNG")]
        late_future = server.in_background([classify(late[0])])
        server.wait_for_metric("niff_queue_depth", 1, model=TINY)
        server.process.send_signal(signal.SIGTERM)
        assert_answers(late, late_future)
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
    result = _run_cli("--model-repository", str(tmp_path), "--port", str(free_port()), "--grpc-port", str(free_port()))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"niff-serve: error: start-up failed: model 'mini': {message}")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_busy_http_port_stops_start_up_with_one_line_before_any_model_loads(
    tiny_only_repository: Path, workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_cli(
            *("--model-repository", str(tiny_only_repository), "--device", "cpu", "--workers", workers),
            *("--port", str(port), "--grpc-port", str(free_port())),
        )
    assert result.returncode == 1
    assert (
        result.stderr
        == f"niff-serve: error: start-up failed: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
    assert result.stdout == ""  # not one log line: no model was loaded


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_drains_quietly(
    tiny_only_repository: Path, tmp_path: Path, photos: Photos, reference: Reference, workers: str
) -> None:
    """Ctrl-C sends SIGINT to the terminal's whole process group (the supervisor and every worker): the
    requests in flight are answered, and nothing prints a traceback."""
    server = ServerProcess(
        tiny_only_repository,
        tmp_path / "server.log",
        *("--workers", workers, "--max-batch-size", "8", "--max-batch-delay-ms", "1500"),
        new_session=True,
    )
    process = server.process
    try:
        server.wait_ready()
        if workers == "2":
            wait_until(lambda: "serving with 2 worker processes" in server.log(), "the two workers did not both serve")
        datas = [photos.jpeg["china"], photos.jpeg["flower"]]
        in_flight = server.in_background([classify(data) for data in datas])
        server.wait_for_metric("niff_queue_depth", len(datas), model=TINY)
        os.killpg(process.pid, signal.SIGINT)
        for data, future in zip(datas, in_flight, strict=True):
            reference.assert_answers(TINY, data, future.result(60))
        assert process.wait(60) == 128 + signal.SIGINT  # as a shell reports an interrupted program
        log = server.log()
        assert "Traceback" not in log and "KeyboardInterrupt" not in log and "CancelledError" not in log
        messages = [r["message"] for r in server.log_records()]
        assert messages.count("stopped") == int(workers)  # every worker's models stopped after the drain
        assert all(line.startswith("{") for line in log.splitlines()), log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        server.stop()


def test_supervisor_reports_a_port_taken_since_the_check(tiny_only_repository: Path) -> None:
    """Between niff-serve's check and the supervisor's bind, another process may take the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(model_repository=tiny_only_repository, port=port, grpc_port=0)
        with pytest.raises(ConfigurationError, match=f"^cannot listen on 127.0.0.1:{port}: Address already in use$"):
            supervise(settings, 2)


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
