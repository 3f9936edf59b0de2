"""What hostile requests cost a real ``niff-serve --workers 2`` with its default limits, and what it notices.

Per request family (sent ``--concurrency`` at once where the family is about decoding): the answer, the time
from the request's last byte to the answer, how far the server's resident memory rose while it ran (peak,
summed over the supervisor and its workers) and how far above its start it stayed once answered, and the
time a good request (a 640x427 JPEG photo) sent right after took. Then: the bytes a server reads of a body
over the limit, how long a stopped worker or supervisor goes unnoticed, and resets under SIGTERM.

    python benchmarks/hostile_requests.py --model-repository models --model digits
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from PIL import Image
from service_load import Server, process_tree
from sklearn.datasets import load_sample_images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile_inputs import chunk_flood_png, comment_flood_jpeg, truncated_jpeg, webp_bomb

MB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--clients", type=int, default=256, help="Keep-alive clients during the SIGTERM test.")
    args = parser.parse_args()
    # What service_load.Server reads.
    args.backend, args.device, args.max_batch_size, args.backend_threads = "auto", "cpu", 16, 0
    args.server_arg = ["--workers", "2"]
    return args


def memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss(server: Server) -> int:
    return sum(memory(pid, "VmRSS") for pid in process_tree(server.process.pid))


def http_request(port: int, head: str, body: bytes) -> tuple[int, float]:
    """Send a whole request on a new connection; its status and the seconds from its last byte to the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        sent = time.perf_counter()
        stream = sock.makefile("rb")
        try:
            status = int(stream.readline().split()[1])
        except (IndexError, ConnectionResetError):
            status = 0  # reset: refused at the transport
        return status, time.perf_counter() - sent


def post(path: str, content_type: str = "application/octet-stream", extra: str = "") -> str:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{extra}"


def v2_bytes(elements: list[bytes], shape: list[int]) -> tuple[str, bytes]:
    raw = b"".join(struct.pack("<I", len(element)) + element for element in elements)
    tensor = {"name": "image", "shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor]}).encode()
    return f"Inference-Header-Content-Length: {len(header)}\r\n", header + raw


def multipart(files: list[bytes]) -> tuple[str, bytes]:
    body = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="%d"\r\n\r\n%s\r\n' % (index, data)
        for index, data in enumerate(files)
    )
    return "multipart/form-data; boundary=b", body + b"--b--\r\n"


def _field(number: int, payload: bytes) -> bytes:
    def varint(value: int) -> bytes:
        out = bytearray()
        while value >= 0x80:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        return bytes(out + bytes([value]))

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def grpc_bytes_flood(model: str, count: int) -> bytes:
    """A ModelInferRequest of ``count`` one-byte images in ``contents.bytes_contents``, written directly."""
    contents = b"\x42\x01a" * count
    tensor = _field(1, b"image") + _field(2, b"BYTES") + _field(3, b"\x01") + _field(5, contents)  # shape [1]
    return _field(1, model.encode()) + _field(5, tensor)


def grpc_call(port: int, message: bytes) -> tuple[int, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MB)]) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        started = time.perf_counter()
        try:
            call(message, timeout=120)
            code = 0
        except grpc.RpcError as error:
            code = error.code().value[0]
        return code, time.perf_counter() - started


Send = Callable[[], tuple[int, float]]


def measure(server: Server, name: str, send: Send, concurrency: int, good: Send) -> None:
    pids = process_tree(server.process.pid)
    before = rss(server)
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: send(), range(concurrency)))
    peak = sum(memory(pid, "VmHWM") for pid in pids)
    good_status, good_s = good()
    time.sleep(1.0)
    after = rss(server)
    statuses = "/".join(sorted({str(status) for status, _ in results}))
    worst = max(seconds for _, seconds in results)
    print(
        f"| {name} | {concurrency} | {statuses} | {worst * 1000:.0f} | {(peak - before) / MB:.1f} "
        f"| {(after - before) / MB:.1f} | {good_status} in {good_s * 1000:.0f} |",
        flush=True,
    )


def body_over_the_limit(server: Server, path: str) -> None:
    """How much of a body declared as 10^12 bytes the server reads before it closes the connection."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n".encode()
    sent, started = 0, time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while time.perf_counter() - started < 30:
                sock.sendall(b"\0" * MB)
                sent += MB
    print(f"- body declared as 10^12 bytes: the server took {sent / MB:.0f} MiB, then closed the connection")


def stopped_process(args: argparse.Namespace, which: str) -> None:
    """SIGSTOP the supervisor or a worker: seconds until the server exits or reports not ready."""
    server = Server(args)
    try:
        pid = server.process.pid if which == "supervisor" else process_tree(server.process.pid)[1]
        os.kill(pid, signal.SIGSTOP)
        started = time.perf_counter()
        while time.perf_counter() - started < 60:
            if which == "worker" and server.process.poll() is not None:
                break
            if which == "supervisor":
                with contextlib.suppress(OSError):
                    if server.get("/v2/health/ready")[0] == 503:
                        break
            time.sleep(0.05)
        noticed = time.perf_counter() - started
        with contextlib.suppress(ProcessLookupError):  # the supervisor killed a stopped worker
            os.kill(pid, signal.SIGCONT)
        outcome = f"exited {server.process.returncode}" if which == "worker" else "not ready"
        print(f"- SIGSTOP of the {which}: {outcome} after {noticed:.2f} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.stop()


def sigterm_under_load(args: argparse.Namespace, photo: bytes) -> None:
    """``--clients`` keep-alive clients in a loop; SIGTERM; every request sent before it must be answered."""
    server = Server(args)
    path = f"/v1/models/{args.model}:classify"
    sigterm_at: list[float] = []
    outcomes: list[tuple[float, str]] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for _ in range(200):
            sent = time.perf_counter()
            try:
                connection.request("POST", path, body=photo)
                response = connection.getresponse()
                response.read()
                outcome = "answered"
            except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected, OSError) as error:
                outcome = type(error).__name__
            with lock:
                outcomes.append((sent, outcome))
            if outcome != "answered" or sigterm_at:
                connection.close()
                if sigterm_at:
                    return
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    sigterm_at.append(time.perf_counter())
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(120)
    before = [outcome for sent, outcome in outcomes if sent < sigterm_at[0]]
    failed = [outcome for outcome in before if outcome != "answered"]
    print(
        f"- SIGTERM under {args.clients} keep-alive clients: {len(before)} requests sent before it, "
        f"{len(before) - len(failed)} answered, {len(failed)} failed ({', '.join(sorted(set(failed))) or 'none'}); "
        f"exit status {server.process.wait(120)}"
    )


def main() -> None:
    args = parse_args()
    buffer = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(buffer, "JPEG", quality=90)
    photo = buffer.getvalue()
    classify, infer = f"/v1/models/{args.model}:classify", f"/v2/models/{args.model}/infer"
    big = io.BytesIO()
    Image.fromarray(load_sample_images().images[1]).resize((6000, 6600)).save(big, "JPEG", quality=85)
    server = Server(args)
    try:
        port, grpc_port, at_once = server.port, server.grpc_port, args.concurrency
        flood = grpc_bytes_flood(args.model, 11_184_144)
        extra, v2_flood = v2_bytes([b"a"] * 6_710_486, [6_710_486])
        one_extra, v2_one = v2_bytes([b"a"] * 6_710_486, [1])
        kind, bombs = multipart([webp_bomb()] * 16)
        png_flood, jpeg_flood = chunk_flood_png(2_700_000), comment_flood_jpeg(8_100_000)
        cases: list[tuple[str, Send, int]] = [
            ("gRPC 11,184,144 one-byte images (33.5 MB)", lambda: grpc_call(grpc_port, flood), 3),
            (
                "v2 HTTP 6,710,486 one-byte images, shape [N]",
                lambda: http_request(port, post(infer, extra=extra), v2_flood),
                1,
            ),
            (
                "v2 HTTP 6,710,486 one-byte images, shape [1]",
                lambda: http_request(port, post(infer, extra=one_extra), v2_one),
                1,
            ),
            (
                "PNG 64x64 with 2.7 M empty chunks (32.4 MB)",
                lambda: http_request(port, post(classify), png_flood),
                at_once,
            ),
            (
                "JPEG 64x64 with 8.1 M comment segments (32.4 MB)",
                lambda: http_request(port, post(classify), jpeg_flood),
                at_once,
            ),
            ("38-byte WebP declaring 6000x6600", lambda: http_request(port, post(classify), webp_bomb()), at_once),
            ("16 such WebPs in one multipart", lambda: http_request(port, post(classify, kind), bombs), at_once),
            (
                "632-byte JPEG declaring 6000x6600",
                lambda: http_request(port, post(classify), truncated_jpeg()),
                at_once,
            ),
            (
                f"6000x6600 JPEG photo ({len(big.getvalue()) / MB:.1f} MB, legal)",
                lambda: http_request(port, post(classify), big.getvalue()),
                at_once,
            ),
        ]
        print("| request | at once | answer | ms after last byte | peak RSS growth MB | RSS after MB | photo after |")
        print("|---|---:|---|---:|---:|---:|---|")
        for name, send, concurrency in cases:
            measure(server, name, send, concurrency, lambda: http_request(port, post(classify), photo))
        body_over_the_limit(server, classify)
    finally:
        server.stop()
    stopped_process(args, "worker")
    stopped_process(args, "supervisor")
    sigterm_under_load(args, photo)


if __name__ == "__main__":
    main()
