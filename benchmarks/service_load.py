"""Closed-loop load on a real ``niff-serve`` process, compared with the raw backend in the same run.

For each concurrency level, that many clients send requests back to back (each waits for its answer
before sending the next) until the level's request count or time bound is reached. Reported per level:
throughput (images/s), p50/p99 latency of successful requests, mean batch size (from the server's
``niff_batch_size`` histogram), the answers by status, and throughput as a fraction of the raw backend
throughput: the same backend, loaded in this process before the server starts, running full batches of
preprocessed tensors with nothing else on the machine. Then the server's CPU time per request, from
/proc for the server and its worker processes, split by stage with the server's ``niff_cpu_seconds``
counters; "other" is what no stage counts (HTTP or gRPC framing, routing, body reading, logging, metrics).

    python benchmarks/service_load.py --model-repository models --model resnet50_split \\
        --concurrency 1,8,32,64 --requests 400 --duration 60

Modes: ``classify`` posts JPEG photos to ``/v1/models/{name}:classify`` (decode and preprocessing
included, the real use); ``v2`` posts preprocessed FP32 tensors with the binary extension to
``/v2/models/{name}/infer`` (service overhead without image decoding); ``grpc`` sends the same tensors
as KServe v2 ``ModelInfer`` calls in ``raw_input_contents`` to the gRPC port. Every client sends request
bytes built once and reads the answer's bytes without decoding them, so the client side costs the same
little for every protocol.

Several modes (``--mode v2,grpc``) and request sizes (``--images-per-request 1,16``) run against the one
server, interleaved: each of ``--rounds`` rounds runs every (size, clients, mode) cell once, the mode
order rotating from round to round. Each cell reports the median over rounds, and a second table the
median over rounds of each mode's throughput relative to the first mode's in the same round.

    python benchmarks/service_load.py --model-repository models --model digits --mode v2,grpc \\
        --images-per-request 1,16 --concurrency 1,16,64 --rounds 5 --requests 400 --duration 20
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from server_process import ServerProcess, free_port
from tritonclient.grpc import service_pb2

from niff_contract import read_model_folder
from niff_serve.core.backends import load_backend
from niff_serve.core.settings import Settings

MODES = ("classify", "v2", "grpc")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True, help="Model folder name to load.")
    parser.add_argument("--mode", default="classify", help=f"Comma-separated, of {', '.join(MODES)}.")
    parser.add_argument("--concurrency", default="1,4,16,32", help="Comma-separated client counts.")
    parser.add_argument("--requests", type=int, default=300, help="Requests per level (after warm-up).")
    parser.add_argument("--duration", type=float, default=60.0, help="Most seconds per level.")
    parser.add_argument("--images-per-request", default="1", help="Comma-separated image counts per request.")
    parser.add_argument("--rounds", type=int, default=1, help="Times every cell runs, interleaved.")
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
        help="Clients wait as a refusal's Retry-After says (HTTP 503, gRPC UNAVAILABLE) before their next request "
        "(as well-behaved clients do); without it a rejected client retries at once.",
    )
    args = parser.parse_args()
    args.modes = args.mode.split(",")
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    args.sizes = [int(n) for n in args.images_per_request.split(",")]
    return args


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


class Server(ServerProcess):
    """``python -m niff_serve`` on 127.0.0.1 with free HTTP and gRPC ports; its JSON log goes to a temporary file."""

    def __init__(self, args: argparse.Namespace) -> None:
        port, self.grpc_port = free_port(), free_port()
        command = [sys.executable, "-m", "niff_serve", "--model-repository", str(args.model_repository)]
        command += ["--port", str(port), "--grpc-port", str(self.grpc_port)]
        command += ["--backend", args.backend, "--device", args.device]
        command += ["--max-batch-size", str(args.max_batch_size), "--backend-threads", str(args.backend_threads)]
        command += ["--log-level", "warning", *args.server_arg]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
        super().__init__(command, port, env, "niff-serve-")
        deadline = time.monotonic() + 300
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start; its log: {self.log.name}")
            time.sleep(0.2)

    def stage_cpu(self, model: str) -> dict[str, float]:
        """The server's ``niff_cpu_seconds`` counters for ``model``, by stage."""
        samples = self.metric_samples(
            lambda name, labels: name == "niff_cpu_seconds_total" and labels.get("model") == model
        )
        return {labels["stage"]: value for _, labels, value in samples}


class HttpClient:
    """One keep-alive connection; ``send`` answers (status, Retry-After seconds or None)."""

    def __init__(self, server: Server, timeout: float) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)

    def send(self, request: object) -> tuple[str, float | None]:
        path, body, headers = request  # type: ignore[misc]
        try:
            self._connection.request("POST", path, body=body, headers=headers)
            response = self._connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            return type(exc).__name__, None
        if response.getheader("Connection", "").lower() == "close":
            self._connection.close()
        retry_after = response.getheader("Retry-After")
        return str(response.status), float(retry_after) if retry_after else None

    def close(self) -> None:
        self._connection.close()


class GrpcClient:
    """A channel of its own (one HTTP/2 connection) sending serialized ``ModelInferRequest`` bytes."""

    def __init__(self, server: Server, timeout: float) -> None:
        self._channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        self._call = self._channel.unary_unary(MODEL_INFER)  # no (de)serializers: bytes in, bytes out
        self._timeout = timeout

    def send(self, request: object) -> tuple[str, float | None]:
        try:
            self._call(request, timeout=self._timeout)
        except grpc.RpcError as error:
            retry_after = dict(error.trailing_metadata() or ()).get("retry-after")  # type: ignore[attr-defined]
            return error.code().name, float(retry_after) if retry_after else None  # type: ignore[attr-defined]
        return "OK", None

    def close(self) -> None:
        self._channel.close()


def requests_for(args: argparse.Namespace, mode: str, images: int) -> list[object]:
    """The distinct requests of one cell; clients cycle through them."""
    if mode == "classify":
        from sklearn.datasets import load_sample_images

        photos = [path.read_bytes() for path in args.image] or [
            Path(f).read_bytes() for f in load_sample_images().filenames
        ]
        path = f"/v1/models/{args.model}:classify?top_k=5"
        if images == 1:
            return [(path, photo, {"Content-Type": "application/octet-stream"}) for photo in photos]
        boundary = "niffbenchmark"
        parts = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="{i}.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + photos[i % len(photos)]
            + b"\r\n"
            for i in range(images)
        )
        body = parts + f"--{boundary}--\r\n".encode()
        return [(path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})]
    shape = read_model_folder(args.model_repository / args.model).manifest.input.shape
    tensor = np.random.default_rng(1).standard_normal((images, *shape), dtype=np.float32)
    if mode == "grpc":
        request = service_pb2.ModelInferRequest(
            model_name=args.model,
            inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=tensor.shape)],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
            raw_input_contents=[tensor.tobytes()],
        )
        return [request.SerializeToString()]
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


def run_level(
    server: Server, args: argparse.Namespace, mode: str, images: int, concurrency: int, requests: list[object]
) -> LevelResult:
    """Closed loop: ``concurrency`` clients, each on its own connection, until the bounds."""
    result = LevelResult(concurrency)
    lock = threading.Lock()
    warmup = concurrency * 2
    counter = {"sent": 0}
    stop_at = time.monotonic() + args.duration
    measuring = threading.Event()
    started: list[float] = []
    ok = "OK" if mode == "grpc" else "200"

    def client(worker: int) -> None:
        connection = (GrpcClient if mode == "grpc" else HttpClient)(server, args.request_timeout)
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
            request = requests[i % len(requests)]
            i += 1
            t0 = time.perf_counter()
            status, retry_after = connection.send(request)
            elapsed = time.perf_counter() - t0
            if args.honor_retry_after and status != ok and retry_after:
                time.sleep(retry_after)
            if counted:
                with lock:
                    result.statuses[status] += 1
                    if status == ok:
                        result.latencies.append(elapsed)
                        result.images += images
        connection.close()

    before = server.batch_histogram(args.model)
    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for thread in threads:
        thread.start()
    measuring.wait(args.duration)
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


def percentile(results: list[LevelResult], q: float) -> float:
    latencies = [t for r in results for t in r.latencies]
    return float(np.percentile(latencies, q)) * 1000 if latencies else float("nan")


def cpu_per_request(level: LevelResult) -> tuple[float, dict[str, float]]:
    """Server CPU milliseconds per request, in total and by stage."""
    requests = sum(level.statuses.values()) or 1
    return 1000 * level.cpu_s / requests, {k: 1000 * v / requests for k, v in level.stage_cpu_s.items()}


def print_cpu_table(cells: list[tuple[int, int]], modes: list[str], results: dict) -> None:
    """Median over rounds of the server's CPU per request, in total and by stage."""
    stages = sorted({stage for runs in results.values() for level in runs for stage in level.stage_cpu_s})
    print("\nServer CPU per request (ms, median over rounds):\n")
    print("| mode | img/request | clients | total | " + " | ".join(stages) + " | other |")
    print("|---|---:|---:|---:|" + "---:|" * (len(stages) + 1))
    for (images, clients), mode in itertools.product(cells, modes):
        per_round = [cpu_per_request(level) for level in results[mode, images, clients]]
        total = statistics.median(t for t, _ in per_round)
        per = {stage: statistics.median(s.get(stage, 0.0) for _, s in per_round) for stage in stages}
        other = statistics.median(t - sum(s.values()) for t, s in per_round)
        cells_text = " | ".join(f"{per[stage]:.3f}" for stage in stages)
        print(f"| {mode} | {images} | {clients} | {total:.3f} | {cells_text} | {other:.3f} |")


def main() -> None:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    raw, raw_description = raw_backend_throughput(args)
    print(f"raw backend: {raw:.1f} img/s ({raw_description}, {os.cpu_count()} CPUs)", flush=True)
    requests = {(mode, n): requests_for(args, mode, n) for mode in args.modes for n in args.sizes}
    server = Server(args)
    cells = list(itertools.product(args.sizes, levels))
    results: dict[tuple[str, int, int], list[LevelResult]] = {}
    started = time.monotonic()
    try:
        print(
            f"\nmodes {', '.join(args.modes)}; {args.rounds} round(s); {args.requests} requests or {args.duration:g} s "
            f"per cell; server options: {' '.join(args.server_arg) or 'defaults'}\n",
            flush=True,
        )
        for round_index in range(args.rounds):
            shift = round_index % len(args.modes)
            order = args.modes[shift:] + args.modes[:shift]
            for (images, clients), mode in itertools.product(cells, order):
                level = run_level(server, args, mode, images, clients, requests[mode, images])
                results.setdefault((mode, images, clients), []).append(level)
            print(f"round {round_index + 1}/{args.rounds} done after {time.monotonic() - started:.0f} s", flush=True)
    finally:
        server.stop()
    print("\n| mode | img/request | clients | img/s | p50 ms | p99 ms | mean batch | vs raw | answers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for (images, clients), mode in itertools.product(cells, args.modes):
        runs = results[mode, images, clients]
        throughput = statistics.median(r.throughput for r in runs)
        answers = sum((r.statuses for r in runs), Counter())
        batch = statistics.median(r.mean_batch for r in runs)
        print(
            f"| {mode} | {images} | {clients} | {throughput:.1f} | {percentile(runs, 50):.1f} | "
            f"{percentile(runs, 99):.1f} | {batch:.2f} | {throughput / raw:.0%} "
            f"| {', '.join(f'{status}: {count}' for status, count in sorted(answers.items()))} |"
        )
    if len(args.modes) > 1:
        base = args.modes[0]
        print(f"\nThroughput relative to {base}, median of the rounds' ratios (each round's ratios in brackets):\n")
        print(f"| img/request | clients | {' | '.join(f'{mode} / {base}' for mode in args.modes[1:])} |")
        print(f"|---:|---:|{'---:|' * (len(args.modes) - 1)}")
        for images, clients in cells:
            ratios = []
            for mode in args.modes[1:]:
                pairs = zip(results[mode, images, clients], results[base, images, clients], strict=True)
                each = [r.throughput / b.throughput if b.throughput else float("nan") for r, b in pairs]
                ratios.append(f"{statistics.median(each):.2f} ({', '.join(f'{x:.2f}' for x in each)})")
            print(f"| {images} | {clients} | {' | '.join(ratios)} |")
    print_cpu_table(cells, args.modes, results)
    print(f"\n{time.monotonic() - started:.0f} s of load; server log: {server.log.name}")


if __name__ == "__main__":
    main()
