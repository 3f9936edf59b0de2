"""Closed-loop load on a real ``niff-serve`` process, compared with the raw backend in the same run.

For each concurrency level, that many clients send requests back to back (each waits for its answer
before sending the next) until the level's request count or time bound is reached. Reported per level:
throughput (images/s), p50/p99 latency of successful requests, mean batch size (from the server's
``niff_batch_size`` histogram), the answers by status, and throughput as a fraction of the raw backend
throughput: the same backend, loaded in this process before the server starts, running full batches of
preprocessed tensors with nothing else on the machine. Then the server's CPU time per request, from
/proc for the server and its worker processes, split by stage with the server's ``niff_cpu_seconds``
counters; "other" is what no stage counts (HTTP parsing, routing, body reading, logging, metrics).

    python benchmarks/service_load.py --model-repository models --model resnet50_split \\
        --concurrency 1,8,32,64 --requests 400 --duration 60

Modes: ``classify`` posts JPEG photos to ``/v1/models/{name}:classify`` (decode and preprocessing
included, the real use); ``v2`` posts preprocessed FP32 tensors with the binary extension to
``/v2/models/{name}/infer`` (service overhead without image decoding).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from niff_contract import read_model_folder
from niff_serve.backends import load_backend
from niff_serve.settings import Settings


@dataclass
class LevelResult:
    concurrency: int
    images: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    mean_batch: float = 0.0
    cpu_s: float = 0.0
    stage_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return float(np.percentile(self.latencies, q)) * 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True, help="Model folder name to load.")
    parser.add_argument("--mode", choices=("classify", "v2"), default="classify")
    parser.add_argument("--concurrency", default="1,4,16,32", help="Comma-separated client counts.")
    parser.add_argument("--requests", type=int, default=300, help="Requests per level (after warm-up).")
    parser.add_argument("--duration", type=float, default=60.0, help="Most seconds per level.")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        help="Image file for classify mode, repeatable (default: scikit-learn's two 640x427 JPEG photos).",
    )
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="How long to time the raw backend.")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torchscript"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--backend-threads", type=int, default=0, help="CPU threads per inference (0: default).")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="Extra niff-serve option, e.g. --server-arg=--max-queue-size=64",
    )
    parser.add_argument("--request-timeout", type=float, default=120.0, help="Client-side timeout per request.")
    parser.add_argument(
        "--honor-retry-after",
        action="store_true",
        help="Clients wait as a 503's Retry-After says before their next request (as well-behaved clients do); "
        "without it a rejected client retries at once.",
    )
    return parser.parse_args()


def raw_backend_throughput(args: argparse.Namespace) -> tuple[float, str]:
    """Images/s of the backend alone on full batches, and a description of what ran."""
    settings = Settings(
        model_repository=args.model_repository,
        backend=args.backend,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_queue_size=max(256, args.max_batch_size),
        backend_threads=args.backend_threads,
    )
    folder = read_model_folder(args.model_repository / args.model)
    batch_size = min(args.max_batch_size, folder.max_batch_size)
    backend = load_backend(folder, settings, batch_size)
    batch = np.random.default_rng(0).standard_normal((batch_size, *folder.manifest.input.shape), dtype=np.float32)
    for _ in range(3):
        backend.run(batch)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.raw_seconds or runs < 3:
        backend.run(batch)
        runs += 1
    elapsed = time.perf_counter() - started
    return runs * batch_size / elapsed, f"{backend.kind} on {backend.device}, batch {batch_size}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m niff_serve`` on 127.0.0.1 with a free port; its JSON log goes to a temporary file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="niff-serve-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, "-m", "niff_serve", "--model-repository", str(args.model_repository)]
        command += ["--port", str(self.port), "--backend", args.backend, "--device", args.device]
        command += ["--max-batch-size", str(args.max_batch_size), "--backend-threads", str(args.backend_threads)]
        command += ["--log-level", "warning", *args.server_arg]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start; its log: {self.log.name}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return self.get("/v2/health/ready")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process and its worker processes so far."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        total = 0.0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stage_cpu(self, model: str) -> dict[str, float]:
        """The server's ``niff_cpu_seconds`` counters for ``model``, by stage."""
        text = self.get("/metrics")[1].decode()
        return {
            sample.labels["stage"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "niff_cpu_seconds_total" and sample.labels.get("model") == model
        }

    def batch_histogram(self, model: str) -> tuple[float, float]:
        """(sum, count) of the model's batch sizes so far."""
        text = self.get("/metrics")[1].decode()
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("model") == model and sample.name in ("niff_batch_size_sum", "niff_batch_size_count")
        }
        return values.get("niff_batch_size_sum", 0.0), values.get("niff_batch_size_count", 0.0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def request_bodies(args: argparse.Namespace) -> list[tuple[str, bytes, dict[str, str]]]:
    """(path, body, headers) per distinct request; clients cycle through them."""
    n = args.images_per_request
    if args.mode == "classify":
        from sklearn.datasets import load_sample_images

        photos = [path.read_bytes() for path in args.image] or [
            Path(f).read_bytes() for f in load_sample_images().filenames
        ]
        path = f"/v1/models/{args.model}:classify?top_k=5"
        if n == 1:
            return [(path, photo, {"Content-Type": "application/octet-stream"}) for photo in photos]
        boundary = "niffbenchmark"
        parts = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="{i}.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + photos[i % len(photos)]
            + b"\r\n"
            for i in range(n)
        )
        body = parts + f"--{boundary}--\r\n".encode()
        return [(path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})]
    shape = read_model_folder(args.model_repository / args.model).manifest.input.shape
    tensor = np.random.default_rng(1).standard_normal((n, *shape), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": tensor.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    return [(f"/v2/models/{args.model}/infer", header + tensor.tobytes(), headers)]


def run_level(server: Server, args: argparse.Namespace, concurrency: int, bodies: list) -> LevelResult:
    """Closed loop: ``concurrency`` clients, each on its own keep-alive connection, until the bounds."""
    result = LevelResult(concurrency)
    lock = threading.Lock()
    warmup = concurrency * 2
    counter = {"sent": 0}
    stop_at = time.monotonic() + args.duration
    measuring = threading.Event()
    started: list[float] = []

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=args.request_timeout)
        i = worker
        while time.monotonic() < stop_at:
            with lock:
                if counter["sent"] >= warmup + args.requests:
                    break
                counter["sent"] += 1
                counted = counter["sent"] > warmup
                if counted and not measuring.is_set():
                    started.append(time.perf_counter())
                    measuring.set()
            path, body, headers = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            retry_after = None
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
                retry_after = response.getheader("Retry-After")
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                connection.close()
            elapsed = time.perf_counter() - t0
            if args.honor_retry_after and status == "503" and retry_after:
                time.sleep(float(retry_after))
            if counted:
                with lock:
                    result.statuses[status] += 1
                    if status == "200":
                        result.latencies.append(elapsed)
                        result.images += args.images_per_request
        connection.close()

    before = server.batch_histogram(args.model)
    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    measuring.wait()
    cpu_before, stages_before = server.cpu_seconds(), server.stage_cpu(args.model)
    for thread in threads:
        thread.join()
    ended = time.perf_counter()
    result.cpu_s = server.cpu_seconds() - cpu_before
    result.stage_cpu_s = {k: v - stages_before.get(k, 0.0) for k, v in server.stage_cpu(args.model).items()}
    after = server.batch_histogram(args.model)
    result.seconds = ended - started[0] if started else 0.0
    batches = after[1] - before[1]
    result.mean_batch = (after[0] - before[0]) / batches if batches else 0.0
    return result


def print_cpu_table(results: list[LevelResult]) -> None:
    """Server CPU milliseconds per request, in total and by stage."""
    stages = sorted({stage for level in results for stage in level.stage_cpu_s})
    print("\nServer CPU per request (ms):\n")
    print("| clients | total | " + " | ".join(stages) + " | other |")
    print("|---:|---:|" + "---:|" * (len(stages) + 1))
    for level in results:
        requests = sum(level.statuses.values()) or 1
        per = {stage: 1000 * level.stage_cpu_s.get(stage, 0.0) / requests for stage in stages}
        total = 1000 * level.cpu_s / requests
        cells = " | ".join(f"{per[stage]:.3f}" for stage in stages)
        print(f"| {level.concurrency} | {total:.3f} | {cells} | {total - sum(per.values()):.3f} |", flush=True)


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    raw, raw_description = raw_backend_throughput(args)
    print(f"raw backend: {raw:.1f} img/s ({raw_description}, {os.cpu_count()} CPUs)", flush=True)
    bodies = request_bodies(args)
    server = Server(args)
    try:
        print(
            f"\nmode {args.mode}, {args.images_per_request} image(s)/request, {args.requests} requests or "
            f"{args.duration:g} s per level, server options: {' '.join(args.server_arg) or 'defaults'}\n"
        )
        print("| clients | img/s | p50 ms | p99 ms | mean batch | vs raw | answers |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        results = []
        for concurrency in levels:
            level = run_level(server, args, concurrency, bodies)
            results.append(level)
            answers = ", ".join(f"{status}: {count}" for status, count in sorted(level.statuses.items()))
            print(
                f"| {concurrency} | {level.throughput:.1f} | {level.percentile(50):.1f} | {level.percentile(99):.1f} "
                f"| {level.mean_batch:.2f} | {level.throughput / raw:.0%} | {answers} |",
                flush=True,
            )
        print_cpu_table(results)
    finally:
        server.stop()
    print(f"\nserver log: {server.log.name}")


if __name__ == "__main__":
    main()
