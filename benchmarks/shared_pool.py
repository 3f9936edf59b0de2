"""Many closed-loop clients on one shared keep-alive pool: does every request get an answer?

A pool reuses idle connections; if the server closes an idle connection just as the pool sends on it,
the request is lost in transit (a ReadError/RemoteProtocolError that never reached the application).
This runs ``--clients`` asyncio tasks on one ``httpx.AsyncClient`` for ``--duration`` seconds, then
sends SIGTERM while ``--in-flight`` requests are still running, and counts every outcome. Compare the
server's keep-alive timeout against the pool's (httpx keeps idle connections 5 s):

    python benchmarks/shared_pool.py --model-repository models --model resnet18_split --clients 512 \\
        --duration 60 --server-arg=--keep-alive-timeout-s=5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
from service_load import Server
from sklearn.datasets import load_sample_images


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=512)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=32, help="Requests running when SIGTERM is sent.")
    parser.add_argument("--server-arg", action="append", default=[], help="Extra niff-serve option.")
    args = parser.parse_args()
    # What service_load.Server reads.
    args.backend, args.device, args.max_batch_size, args.backend_threads = "auto", "cpu", 16, 0
    return args


async def closed_loop(client: httpx.AsyncClient, path: str, photos: list[bytes], until: float, tally: Counter) -> None:
    i = 0
    while time.monotonic() < until:
        try:
            response = await client.post(path, content=photos[i % len(photos)])
            tally[str(response.status_code)] += 1
            if response.status_code == 503:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
        except httpx.TransportError as exc:
            tally[type(exc).__name__] += 1
        i += 1


async def in_progress(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    return sum(
        float(line.split()[1]) for line in text.splitlines() if line.startswith("niff_http_requests_in_progress ")
    )


async def drain(client: httpx.AsyncClient, server: Server, path: str, photos: list[bytes], count: int) -> Counter:
    """``count`` requests started, then SIGTERM: each must still be answered."""
    tally: Counter = Counter()

    async def one(i: int) -> None:
        try:
            response = await client.post(path, content=photos[i % len(photos)])
            tally[str(response.status_code)] += 1
        except httpx.TransportError as exc:
            tally[type(exc).__name__] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    deadline = time.monotonic() + 30
    while not all(task.done() for task in tasks) and time.monotonic() < deadline:
        if await in_progress(client) > count:  # every request is inside the server (the scrape counts itself)
            break
    server.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*tasks)
    return tally


async def run(args: argparse.Namespace, server: Server) -> None:
    photos = [Path(f).read_bytes() for f in load_sample_images().filenames]
    path = f"/v1/models/{args.model}:classify"
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", limits=limits, timeout=120) as client:
        tally: Counter = Counter()
        until = time.monotonic() + args.duration
        await asyncio.gather(*(closed_loop(client, path, photos, until, tally) for _ in range(args.clients)))
        lost = sum(n for status, n in tally.items() if not status.isdigit())
        print(f"{args.clients} clients, {args.duration:g} s: {dict(sorted(tally.items()))}; lost in transit: {lost}")
        drained = await drain(client, server, path, photos, args.in_flight)
        print(f"SIGTERM with {args.in_flight} in flight: {dict(sorted(drained.items()))}")


def main() -> None:
    args = parse_args()
    server = Server(args)
    try:
        print(f"server options: {' '.join(args.server_arg) or 'defaults'}; {os.cpu_count()} CPUs")
        asyncio.run(run(args, server))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
