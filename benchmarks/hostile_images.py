"""What hostile images cost a real ``niff-serve``: time to the answer and growth of the server's peak memory.

Each image is sent ``--repeats`` times over REST (``:classify``) and as a KServe v2 BYTES tensor, one at a
time on one keep-alive connection; reported per image: its size on the wire, the answer, the median and
worst time to the answer, and how far the server's resident-set high-water mark (VmHWM, summed over the
server and its worker processes) rose while it was being answered. The family: 1×N and N×1 PNGs (a few
kB each; resizing the short side first would make them ``resize × resize·N`` pixels), the 30000² PNG
bomb, and for scale one of scikit-learn's 640×427 photos.

    python benchmarks/hostile_images.py --model-repository models --model digits
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import struct
import time
from pathlib import Path

from PIL import Image
from service_load import Server, process_tree
from sklearn.datasets import load_sample_images


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--server-arg", action="append", default=[], help="Extra niff-serve option.")
    args = parser.parse_args()
    # What service_load.Server reads.
    args.backend, args.device, args.max_batch_size, args.backend_threads = "auto", "cpu", 16, 0
    return args


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def family() -> dict[str, bytes]:
    images = {f"{w}x{h} PNG": png(Image.new("L", (w, h), 255)) for w, h in [(1, 4_000_000), (4_000_000, 1)]}
    images.update({f"{w}x{h} PNG": png(Image.new("L", (w, h), 255)) for w, h in [(1, 100_000), (100_000, 1)]})
    images["30000x30000 PNG"] = png(Image.new("1", (30000, 30000)))
    photo = io.BytesIO()
    Image.fromarray(load_sample_images().images[0]).save(photo, "JPEG", quality=90)
    images["640x427 JPEG photo"] = photo.getvalue()
    return images


def v2_bytes(image: bytes) -> tuple[bytes, dict[str, str]]:
    raw = struct.pack("<I", len(image)) + image
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def peak_rss_mb(server: Server) -> float:
    total = 0
    for pid in process_tree(server.process.pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def main() -> None:
    args = parse_args()
    server = Server(args)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        routes = {
            "REST": lambda data: (f"/v1/models/{args.model}:classify", data, {}),
            "v2 BYTES": lambda data: (f"/v2/models/{args.model}/infer", *v2_bytes(data)),
        }
        print("| image | bytes | protocol | status | median ms | worst ms | peak RSS growth MB |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for name, data in family().items():
            for protocol, build in routes.items():
                path, body, headers = build(data)
                before, times, statuses = peak_rss_mb(server), [], set()
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    connection.request("POST", path, body=body, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    times.append(1000 * (time.perf_counter() - started))
                    statuses.add(response.status)
                growth = peak_rss_mb(server) - before
                status = "/".join(str(s) for s in sorted(statuses))
                print(
                    f"| {name} | {len(data)} | {protocol} | {status} | {statistics.median(times):.1f} "
                    f"| {max(times):.1f} | {growth:.1f} |"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
