"""Fixtures for the service tests: a model repository exported in this session, real servers, real photos.

Servers are real ``python -m niff_serve`` processes (the ``niff-serve`` entry point) on 127.0.0.1 and free
ports; tests talk to them over HTTP and gRPC only.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tiny_onnx
import tritonclient.http as triton_http
from PIL import Image
from polling import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_sample_images

from niff_contract import ImageLimits, Preprocessing, Preprocessor, read_model_folder
from niff_serve.core.postprocessing import softmax

API_KEY = "test-key-0123456789"
TINY = "tiny"  # 10 classes, 32x32, ONNX and TorchScript
MINI = "mini"  # 4 classes, 24x24, ONNX only, other preprocessing
DIGIT_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def export_test_model(
    repository: Path,
    name: str,
    *,
    size: int,
    labels: list[str],
    formats: tuple[str, ...] = ("onnx", "torchscript"),
    preprocessing: Preprocessing | None = None,
    version: int = 1,
) -> Path:
    """Export a tiny NIFF model (ResNet-18 split, narrow) into ``repository/name`` and return that folder.

    torch is imported here, not at the top: the in-process tier (``make test-fast``) never imports it.
    """
    import torch

    import niff
    import niff_export

    torch.manual_seed(len(name))
    model = niff.create_model(
        "resnet18_split", num_classes=len(labels), small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
    )
    if preprocessing is not None:
        model.niff_spec = dataclasses.replace(model.niff_spec, preprocessing=preprocessing)
    return niff_export.export_model(model, size, repository, name, formats=formats, labels=labels, version=version).path


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two models with different sizes, class counts and preprocessing."""
    root = tmp_path_factory.mktemp("models")
    export_test_model(root, TINY, size=32, labels=DIGIT_LABELS)
    export_test_model(
        root,
        MINI,
        size=24,
        labels=["cat", "dog", "bird", "fish"],
        formats=("onnx",),
        preprocessing=Preprocessing(
            input_size=24, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic"
        ),
    )
    return root


@pytest.fixture(scope="session")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models named and shaped like :func:`repository`'s (10 and 4 classes, different preprocessing), built
    without torch (:mod:`tiny_onnx`): the in-process tier's."""
    root = tmp_path_factory.mktemp("onnx-models")
    tiny_onnx.write_folder(root, TINY, size=32, labels=tuple(DIGIT_LABELS))
    tiny_onnx.write_folder(
        root,
        MINI,
        size=24,
        labels=("cat", "dog", "bird", "fish"),
        preprocessing=Preprocessing(crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic"),
        seed=1,
    )
    return root


@pytest.fixture(scope="session")
def tiny_only_repository(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_only")
    shutil.copytree(repository / TINY, root / TINY)
    return root


class Reference:
    """The expected answer, computed in-process: the service's preprocessing, then ONNX Runtime directly."""

    def __init__(self, repository: Path) -> None:
        self._repository = repository
        self._sessions: dict[str, ort.InferenceSession] = {}

    def preprocess(self, model: str, data: bytes) -> np.ndarray:
        folder = read_model_folder(self._repository / model)
        return Preprocessor(folder.manifest.preprocessing, ImageLimits(max_pixels=10**8))(data)

    def logits(self, model: str, batch: np.ndarray) -> np.ndarray:
        if model not in self._sessions:
            path = str(self._repository / model / "1" / "model.onnx")
            self._sessions[model] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return self._sessions[model].run(["logits"], {"input": batch})[0]

    def probabilities(self, model: str, data: bytes) -> np.ndarray:
        return softmax(self.logits(model, self.preprocess(model, data)[None]))[0]

    def assert_answers(self, model: str, data: bytes, response: httpx.Response) -> None:
        """``response`` is a 200 classify answer for ``data`` that lists every class's probability, best first."""
        assert response.status_code == 200, response.text
        top = response.json()["predictions"][0]["top_k"]
        expected = np.sort(self.probabilities(model, data))[::-1]
        np.testing.assert_allclose([c["probability"] for c in top], expected, atol=1e-5)


@pytest.fixture(scope="session")
def reference(repository: Path) -> Reference:
    return Reference(repository)


@dataclass(frozen=True)
class Photos:
    """Real photos (scikit-learn's sample images) as the original JPEG bytes and as decoded arrays."""

    jpeg: dict[str, bytes]
    arrays: dict[str, np.ndarray]

    def encode(self, name: str, fmt: str, mode: str = "RGB", **options: object) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.arrays[name]).convert(mode).save(buffer, fmt, **options)
        return buffer.getvalue()


@pytest.fixture(scope="session")
def photos() -> Photos:
    samples = load_sample_images()
    names = [Path(f).stem for f in samples.filenames]
    return Photos(
        jpeg={n: Path(f).read_bytes() for n, f in zip(names, samples.filenames, strict=True)},
        arrays=dict(zip(names, samples.images, strict=True)),
    )


def workers_of(server: ServerProcess) -> list[int]:
    """The pids of a supervising server's worker processes."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


class ServerProcess:
    """A ``python -m niff_serve`` process and HTTP helpers to talk to it (gRPC on ``grpc_url``).

    ``new_session``: in a process group of its own, which the test can signal as a terminal's Ctrl-C does.
    """

    def __init__(
        self, repository: Path, log_path: Path, *args: str, api_key: str | None = None, new_session: bool = False
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.api_key = api_key
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
        if api_key is not None:
            env["NIFF_API_KEY"] = api_key
        command = [sys.executable, "-m", "niff_serve", "--model-repository", str(repository)]
        command += ["--port", str(self.port), "--grpc-port", str(self.grpc_port)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *command,
                "--device",
                "cpu",
                "--workers",
                "1",
                "--backend-threads",
                "1",
                "--preprocess-workers",
                "2",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=new_session,
        )

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.api_key is None else {"Authorization": f"Bearer {self.api_key}"}

    def client(self, **options: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60, **options)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(self.ready, lambda: f"server not ready:\n{self.log()}", timeout)

    def ready(self) -> bool:
        """Whether the server reports ready; RuntimeError once it has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        return [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]

    def wait_for_log(self, match: Callable[[dict], bool], timeout: float = 30) -> list[dict]:
        """The log records satisfying ``match``, once there is one (some are written after the answer)."""
        return wait_until(
            lambda: [record for record in self.log_records() if match(record)],
            lambda: f"no matching log record:\n{self.log()[-3000:]}",
            timeout,
        )

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def wait_for_metric(self, name: str, value: float, timeout: float = 30, **labels: str) -> None:
        """Poll until the metric reaches ``value`` (events that happen in the server after a client call)."""
        wait_until(
            lambda: self.metric(name, **labels) >= value,
            lambda: f"{name}{labels} stayed at {self.metric(name, **labels)}, expected {value}",
            timeout,
        )

    def in_background(self, requests: list[Callable[[httpx.Client], httpx.Response]]) -> list[Future]:
        """Send each request from its own thread and connection, all at once."""

        def send(request: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
            with self.client() as client:
                return request(client)

        pool = ThreadPoolExecutor(len(requests))
        futures = [pool.submit(send, request) for request in requests]
        pool.shutdown(wait=False)
        return futures

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def classify_digits(server: ServerProcess, images: np.ndarray, batch: int) -> np.ndarray:
    """Every image classified over REST as PNG files, ``batch`` per multipart request: the top-1 labels."""
    served: list[int] = []
    with server.client() as client:
        for start in range(0, len(images), batch):
            files = [
                ("files", (f"{i}.png", _png(images[i]), "image/png"))
                for i in range(start, min(start + batch, len(images)))
            ]
            response = client.post("/v1/models/digits:classify", files=files, params={"top_k": 1})
            assert response.status_code == 200, response.text
            served += [int(p["top_k"][0]["label"]) for p in response.json()["predictions"]]
    return np.array(served)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def classify(data: bytes, model: str = TINY) -> Callable[[httpx.Client], httpx.Response]:
    """A request for :meth:`ServerProcess.in_background`: classify ``data``, all classes."""
    return lambda client: client.post(f"/v1/models/{model}:classify", content=data, params={"top_k": 10})


def _start(repository: Path, log_path: Path, *args: str, api_key: str | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(repository, log_path, *args, api_key=api_key)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Both models, an API key, a realistic batching window and a 2 MB body limit."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    args = ("--max-batch-size", "8", "--max-batch-delay-ms", "10", "--max-upload-bytes", "2000000")
    yield from _start(repository, log, *args, api_key=API_KEY)


@pytest.fixture(scope="session")
def slow_server(tiny_only_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A 2 s batching window, 4-image batches and queue: requests wait long enough to be observed queued."""
    log = tmp_path_factory.mktemp("logs") / "slow.log"
    args = ("--max-batch-size", "4", "--max-queue-size", "4", "--max-batch-delay-ms", "2000")
    yield from _start(tiny_only_repository, log, *args, "--request-timeout-s", "20")


@pytest.fixture
def http(server: ServerProcess) -> Iterator[triton_http.InferenceServerClient]:
    """tritonclient's HTTP client on the shared server."""
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """A factory for further ready servers, ``start_server(repository, *args, api_key=None)``; all stop at the
    session's end."""
    started: list[ServerProcess] = []

    def start(repository: Path, *args: str, api_key: str | None = None) -> ServerProcess:
        server = ServerProcess(repository, tmp_path_factory.mktemp("logs") / "server.log", *args, api_key=api_key)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
