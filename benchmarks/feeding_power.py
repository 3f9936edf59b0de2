"""Feeding power: how many requests niff-serve's front ends feed to one accelerator, split vs replicated.

On a GPU host the device is rarely the bottleneck: the processes that parse HTTP, decode and preprocess
images are. This benchmark starts real ``niff-serve`` servers, one per configuration (``--topology
replicated`` or ``split``, with ``--workers`` processes), all on 127.0.0.1 with free ports, and drives
each with closed-loop load (every client sends its next request when the answer to the previous one has
arrived) from several client processes. Per configuration, request type and client count it reports
requests/s, p50/p99 latency, the mean batch size the server formed (its ``niff_batch_size`` histogram,
sum and count deltas over the measured window), and the CPU the server's processes and the clients took.

``--simulated-device 2+0.005`` swaps the model's runtime for a simulated accelerator inside the servers
started here (never through niff-serve's own options: benchmarks/simulated_device/sitecustomize.py, put
on the servers' PYTHONPATH): every batch costs 2 ms + 0.005 ms per image of sleep, no CPU, and the
batches of every process run one at a time under one file lock, as on one GPU. The CPU then goes to the
front ends alone. Without it the real model runs on the CPU.

    python benchmarks/feeding_power.py --model-repository /tmp/bench-models --model digits \\
        --simulated-device 2+0.005 --rounds 3
    python benchmarks/feeding_power.py --model-repository /tmp/bench-models --model digits --rounds 3

Cells run interleaved: each of ``--rounds`` rounds runs every (request type, clients) cell against every
configuration, the configuration order rotating from round to round; each cell reports the median over
rounds. Request types: ``png``, one 32x32 PNG per request, and ``jpeg``, one 640x427 JPEG photo
(scikit-learn's china.jpg), both to ``/v1/models/{model}:classify?top_k=1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import io
import itertools
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from server_process import ServerProcess, cpu_seconds, free_port, process_tree

SIMULATED_DEVICE_DIR = Path(__file__).resolve().parent / "simulated_device"
REQUEST_TYPES = ("png", "jpeg")
# A cell's clients get this long after their window to finish the requests in flight, then are abandoned.
DRAIN_S = 60.0
START_TIMEOUT_S = 300.0


# --- client processes ------------------------------------------------------------------------------


def _http_request(model: str, body: bytes) -> bytes:
    head = (
        f"POST /v1/models/{model}:classify?top_k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _one_connection(port: int, request: bytes, start: float, t0: float, t1: float, out: dict) -> None:
    """Closed loop on one keep-alive connection until ``t1``; answers completed within [t0, t1] are counted."""
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    reader = writer = None
    while time.monotonic() < t1:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            sent = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ", 2)[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            done = time.monotonic()
            if headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            status, done = type(exc).__name__, time.monotonic()
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.05)
        if t0 <= done <= t1:
            out["statuses"][status] += 1
            if status == "200":
                out["latencies"].append(done - sent)
    if writer is not None:
        writer.close()


async def _drive(command: dict) -> dict:
    out: dict = {"statuses": Counter(), "latencies": []}
    request = _http_request(command["model"], command["body"])
    tasks = [
        _one_connection(command["port"], request, command["start"], command["t0"], command["t1"], out)
        for _ in range(command["connections"])
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=command["t1"] - time.monotonic() + DRAIN_S)
    except TimeoutError:
        out["statuses"]["abandoned after the window"] += 1
    return out


def client_process(pipe: Connection) -> None:
    """Run the cells the benchmark sends (dicts; None ends it), answering each with its results."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    for _ in range(100_000):
        command = pipe.recv()
        if command is None:
            return
        pipe.send(run(_drive(command)))


class ClientPool:
    """``count`` client processes, started before anything heavy is imported."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=client_process, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes if process.pid is not None]

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)


# --- servers --------------------------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """In a server's process: SIGTERM when the benchmark dies, even killed outright (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Config:
    topology: str
    workers: int

    @property
    def name(self) -> str:
        return f"{self.topology} {self.workers}"

    @property
    def model_processes(self) -> int:
        """Processes that load the models: every worker when replicated, the inference process when split."""
        return self.workers if self.topology == "replicated" else 1


class Server(ServerProcess):
    """``python -m niff_serve`` with free ports, one configuration; its log goes to a temporary file."""

    def __init__(self, config: Config, args: argparse.Namespace, repository: Path, lock: Path) -> None:
        self.config = config
        port = free_port()
        command = [sys.executable, "-m", "niff_serve", "--model-repository", str(repository)]
        command += ["--port", str(port), "--grpc-port", "0", "--log-level", "warning", "--no-ui"]
        command += ["--topology", config.topology, "--workers", str(config.workers)]
        if args.max_batch_size:
            command += ["--max-batch-size", str(args.max_batch_size)]
        command += args.server_arg
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NIFF_", "SIMULATED_DEVICE_"))}
        if args.simulated_device:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SIMULATED_DEVICE_DIR), env.get("PYTHONPATH")]))
            env["SIMULATED_DEVICE_TIMING"] = args.simulated_device
            env["SIMULATED_DEVICE_LOCK"] = str(lock)
        super().__init__(command, port, env, "niff-feeding-", preexec_fn=_die_with_parent)

    def wait_serving(self, simulated: bool) -> None:
        """Until it answers ready, all its processes are up and their start-up CPU work is over."""
        expected = 1 if self.config.workers == 1 and self.config.topology == "replicated" else 0
        expected = expected or 1 + self.config.workers + (self.config.topology == "split")
        deadline = time.monotonic() + START_TIMEOUT_S
        last = -1.0
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.config.name} did not start; its log: {self.log.name}")
            pids = process_tree(self.process.pid)
            used = cpu_seconds(pids)
            if self.ready() and len(pids) == expected and used - last < 0.05:
                break
            last = used
            time.sleep(1.0)
        lines = Path(self.log.name).read_text().count("simulated device: ")
        want = self.config.model_processes if simulated else 0
        if lines != want:
            raise SystemExit(f"{self.config.name}: {lines} simulated device loads, not {want}; log {self.log.name}")


# --- cells ----------------------------------------------------------------------------------------------


@dataclass
class Cell:
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    batches: float = 0.0
    images: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # the rest of the machine: other jobs on a shared host

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else float("nan")

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run_cell(server: Server, pool: ClientPool, args: argparse.Namespace, body: bytes, clients: int) -> Cell:
    """``clients`` closed-loop connections spread over the client processes; the window after the warm-up."""
    spread = [clients // len(pool.pipes) + (i < clients % len(pool.pipes)) for i in range(len(pool.pipes))]
    start = time.monotonic() + 0.2
    t0 = start + args.warmup
    t1 = t0 + args.seconds
    busy = [(pipe, n) for pipe, n in zip(pool.pipes, spread, strict=True) if n]
    command = {"model": args.model, "port": server.port, "body": body, "start": start, "t0": t0, "t1": t1}
    for pipe, n in busy:
        pipe.send({**command, "connections": n})
    time.sleep(max(0.0, t0 - time.monotonic()))
    server_pids, client_pids = process_tree(server.process.pid), pool.pids
    cpu0, clients0, all0 = cpu_seconds(server_pids), cpu_seconds(client_pids), machine_busy_seconds()
    hist0 = server.batch_histogram(args.model)
    time.sleep(max(0.0, t1 - time.monotonic()))
    cell = Cell(seconds=t1 - t0)
    cell.server_cpu_s = cpu_seconds(server_pids) - cpu0
    cell.client_cpu_s = cpu_seconds(client_pids) - clients0
    cell.other_cpu_s = machine_busy_seconds() - all0 - cell.server_cpu_s - cell.client_cpu_s
    hist1 = server.batch_histogram(args.model)
    cell.images, cell.batches = hist1[0] - hist0[0], hist1[1] - hist0[1]
    for pipe, _ in busy:
        if not pipe.poll(DRAIN_S + 10):
            raise SystemExit("a client process did not answer")
        out = pipe.recv()
        cell.statuses.update(out["statuses"])
        cell.latencies += out["latencies"]
    cell.requests = cell.statuses["200"]
    return cell


def request_bodies() -> dict[str, bytes]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    china = next(Path(f) for f in load_sample_images().filenames if f.endswith("china.jpg"))
    small = io.BytesIO()
    with Image.open(china) as photo:
        assert photo.size == (640, 427), photo.size
        photo.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR).save(small, format="PNG")
    return {"png": small.getvalue(), "jpeg": china.read_bytes()}


# --- main -----------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True, help="The model folder to serve (copied alone into a temporary one).")
    parser.add_argument(
        "--simulated-device",
        metavar="MS+MS",
        help="Simulate one accelerator: FIXED+PER_IMAGE milliseconds of sleep per batch (e.g. 2+0.005).",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=None, help="niff-serve's --max-batch-size (default: 128 when simulated)."
    )
    parser.add_argument("--configs", default="replicated:1,replicated:2,split:1,split:2", help="TOPOLOGY:WORKERS,...")
    parser.add_argument("--request-types", default="png,jpeg", help=f"Comma-separated, of {', '.join(REQUEST_TYPES)}.")
    parser.add_argument("--clients", default="1,64", help="Comma-separated concurrent client counts.")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds of load before each window.")
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds each cell is measured.")
    parser.add_argument("--server-arg", action="append", default=[], help="Extra niff-serve option.")
    args = parser.parse_args()
    if args.simulated_device:
        parts = args.simulated_device.split("+")
        try:
            if len(parts) != 2 or min(float(p) for p in parts) < 0:
                raise ValueError
        except ValueError:
            parser.error("--simulated-device wants FIXED_MS+PER_IMAGE_MS, e.g. 2+0.005")
        if args.max_batch_size is None:
            args.max_batch_size = 128
    args.config_list = [Config(t, int(n)) for t, n in (c.split(":") for c in args.configs.split(","))]
    if any(c.topology not in ("replicated", "split") for c in args.config_list):
        parser.error("--configs: topologies are replicated and split")
    args.types = args.request_types.split(",")
    if set(args.types) - set(REQUEST_TYPES):
        parser.error(f"--request-types: choose from {', '.join(REQUEST_TYPES)}")
    args.client_counts = [int(n) for n in args.clients.split(",")]
    if not 1 <= args.client_processes <= 64 or not 1 <= args.rounds <= 100:
        parser.error("--client-processes 1-64, --rounds 1-100")
    return args


def device_busy(cells: list[Cell], timing: str | None) -> str:
    """The simulated device's busy time over the window, from the batches formed (median over rounds)."""
    if not timing:
        return "–"
    fixed, per_image = (float(p) for p in timing.split("+"))
    return f"{statistics.median((c.batches * fixed + c.images * per_image) / 1000 / c.seconds for c in cells):.0%}"


def report(args: argparse.Namespace, results: dict[tuple[str, str, int], list[Cell]]) -> None:
    cpus = os.cpu_count() or 1
    low, high = min(args.client_counts), max(args.client_counts)
    for kind in args.types:
        print(f"\n{kind}: medians over {args.rounds} rounds ({args.seconds:g} s windows)\n")
        print(
            f"| topology | processes | req/s at {high} | p50 ms | p99 ms | mean batch | device busy | "
            f"server CPU | client CPU | other CPU | p50 ms at {low} | req/s at {low} | answers not 200 |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for config in args.config_list:
            hi, lo = results[config.name, kind, high], results[config.name, kind, low]
            bad = sum((c.statuses for c in hi + lo), Counter())
            bad.pop("200", None)
            med = statistics.median
            print(
                f"| {config.topology} | {config.workers} | {med(c.rate for c in hi):.0f} "
                f"| {med(c.percentile(50) for c in hi):.1f} | {med(c.percentile(99) for c in hi):.1f} "
                f"| {med(c.mean_batch for c in hi):.1f} "
                f"| {device_busy(hi, args.simulated_device)} "
                f"| {med(c.server_cpu_s / c.seconds for c in hi) / cpus:.0%} "
                f"| {med(c.client_cpu_s / c.seconds for c in hi) / cpus:.0%} "
                f"| {med(c.other_cpu_s / c.seconds for c in hi) / cpus:.0%} "
                f"| {med(c.percentile(50) for c in lo):.2f} | {med(c.rate for c in lo):.0f} "
                f"| {', '.join(f'{s}: {n}' for s, n in sorted(bad.items())) or 'none'} |"
            )
        base = args.config_list[0]
        print(f"\nreq/s at {high} clients relative to {base.name}, per round: ", end="")
        for config in args.config_list[1:]:
            ratios = [
                c.rate / b.rate
                for c, b in zip(results[config.name, kind, high], results[base.name, kind, high], strict=True)
            ]
            print(f"{config.name} {statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}); ", end="")
        print()


def main() -> None:
    args = parse_args()
    pool = ClientPool(args.client_processes)  # forked before anything heavy is imported or any thread runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="niff-feeding-"))
    servers: list[Server] = []
    started = time.monotonic()
    load = Path("/proc/loadavg").read_text().split()[0]
    try:
        repository = workdir / "models"
        shutil.copytree(args.model_repository / args.model, repository / args.model)
        bodies = request_bodies()
        for config in args.config_list:
            servers.append(Server(config, args, repository, workdir / "device.lock"))
        for server in servers:
            server.wait_serving(bool(args.simulated_device))
        print(f"{len(servers)} servers serving after {time.monotonic() - started:.0f} s; commands:", flush=True)
        for server in servers:
            print("  " + " ".join(server.command[1:]).replace(str(workdir), "$TMP"), flush=True)
        results: dict[tuple[str, str, int], list[Cell]] = {}
        cells = list(itertools.product(args.types, args.client_counts))
        for round_index in range(args.rounds):
            shift = round_index % len(servers)
            order = servers[shift:] + servers[:shift]
            for (kind, clients), server in itertools.product(cells, order):
                cell = run_cell(server, pool, args, bodies[kind], clients)
                results.setdefault((server.config.name, kind, clients), []).append(cell)
            took = time.monotonic() - started
            print(f"round {round_index + 1}/{args.rounds} done after {took:.0f} s", flush=True)
        load += " at the start, " + Path("/proc/loadavg").read_text().split()[0] + " at the end"
    finally:
        for server in servers:
            server.stop()
        pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
    what = f"simulated device {args.simulated_device} ms" if args.simulated_device else "the real model"
    batch = args.max_batch_size or "from config.pbtxt"
    print(f"\nmodel {args.model}, {what}, max batch {batch}; {os.cpu_count()} CPUs; load average {load}")
    report(args, results)
    print(f"\n{time.monotonic() - started:.0f} s in all; server logs: {' '.join(s.log.name for s in servers)}")


if __name__ == "__main__":
    main()
