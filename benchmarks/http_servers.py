"""The same niff-serve app under several ASGI servers: cost per request and the connection limits each has.

For each server: server CPU per request (a 32x32 PNG classified by the digits model, 16 closed-loop
clients, the server's CPU from /proc), what a 1 MiB request header gets, when a connection that sends
nothing is closed, and when an idle keep-alive connection is closed. ``niff-serve`` is uvicorn with
httptools plus the limits of ``niff_serve.http.connections``; the others run the same app with their defaults.
Servers that are not installed are skipped with a line (``pip install granian hypercorn`` adds them).

    python benchmarks/http_servers.py --model-repository models --model digits --image examples/digits/digit-7.png
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from service_load import cpu_seconds

APP_MODULE = """
from niff_serve.process.serving import create_app
from niff_serve.core.logs import configure_logging
from niff_serve.core.settings import Settings

configure_logging("warning")
app = create_app(Settings())
"""
PROBE_TIMEOUT_S = 100.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def commands(port: int) -> dict[str, list[str] | None]:
    python = [sys.executable, "-m"]
    uvicorn = [*python, "uvicorn", "niff_bench_app:app", "--port", str(port), "--log-level", "warning"]
    granian = shutil.which("granian") or str(Path(sys.executable).with_name("granian"))
    return {
        "niff-serve (uvicorn + httptools + limits)": [
            *python, "niff_serve", "--port", str(port), "--workers", "1", "--log-level", "warning"
        ],
        "uvicorn + httptools": [*uvicorn, "--http", "httptools", "--no-access-log"],
        "uvicorn + h11": [*uvicorn, "--http", "h11", "--no-access-log"],
        "granian": [granian, "niff_bench_app:app", "--interface", "asgi", "--port", str(port), "--http", "1"]
        if importlib.util.find_spec("granian")
        else None,
        "hypercorn": [*python, "hypercorn", "niff_bench_app:app", "--bind", f"127.0.0.1:{port}"]
        if importlib.util.find_spec("hypercorn")
        else None,
    }  # fmt: skip


def wait_ready(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/v2/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def cpu_per_request(port: int, pid: int, path: str, image: bytes, requests: int, clients: int) -> float:
    def run(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(count):
            connection.request("POST", path, body=image)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"answer {response.status}")

    run(50)
    before = cpu_seconds(pid)
    threads = [threading.Thread(target=run, args=(requests // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 1000 * (cpu_seconds(pid) - before) / (requests // clients * clients)


def until_closed(sock: socket.socket) -> tuple[float | None, bytes]:
    """Seconds until the server closes ``sock`` (None: still open after the probe timeout), and what it sent."""
    started = time.monotonic()
    sock.settimeout(PROBE_TIMEOUT_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None, received
    except ConnectionResetError:
        pass
    return time.monotonic() - started, received


def huge_header(port: int) -> str:
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    with contextlib.suppress(OSError):  # the server may hang up while the header is still being sent
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * (1 << 20) + b"\r\n\r\n")
    _, answer = until_closed(sock)
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(closed without an answer)"
    return f"{status} after {time.monotonic() - started:.2f} s"


def silent_connection(port: int) -> str:
    closed, _ = until_closed(socket.create_connection(("127.0.0.1", port)))
    return f"closed after {closed:.1f} s" if closed is not None else f"still open after {PROBE_TIMEOUT_S:g} s"


def idle_keep_alive(port: int) -> str:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received or not received.endswith(b"}"):
        received += sock.recv(65536)
    closed, _ = until_closed(sock)
    return f"closed after {closed:.1f} s" if closed is not None else f"still open after {PROBE_TIMEOUT_S:g} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    image = args.image.read_bytes()
    path = f"/v1/models/{args.model}:classify"
    module_dir = Path(tempfile.mkdtemp(prefix="niff-bench-"))
    (module_dir / "niff_bench_app.py").write_text(APP_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
    env.update(
        NIFF_MODEL_REPOSITORY=str(args.model_repository), NIFF_DEVICE="cpu", NIFF_BACKEND_THREADS="1",
        PYTHONPATH=f"{module_dir}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )  # fmt: skip
    print(f"{os.cpu_count()} CPUs; {args.clients} clients, {args.requests} requests of {args.image.name}\n")
    print("| server | CPU ms/request | 1 MiB header | silent connection | idle keep-alive connection |")
    print("|---|---:|---|---|---|")
    for name in commands(0):
        port = free_port()
        command = commands(port)[name]
        if command is None:
            print(f"| {name} | not installed | | | |", flush=True)
            continue
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, process)
            cost = cpu_per_request(port, process.pid, path, image, args.requests, args.clients)
            row = [f"{cost:.2f}", huge_header(port), silent_connection(port), idle_keep_alive(port)]
            print(f"| {name} | " + " | ".join(row) + " |", flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    shutil.rmtree(module_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
