"""Schemathesis against a real ``niff-serve``: does the server keep the promises of its own OpenAPI document?

Runs ``schemathesis run URL/openapi.json --checks all`` (every check: no 5xx, statuses, content types and
bodies as documented, schema-valid requests accepted, schema-invalid ones refused, authentication
enforced, the stateful phase's links) twice against a server on 127.0.0.1 and free ports: once without an
API key and once with one (``NIFF_API_KEY`` on the server, ``-H 'Authorization: Bearer …'`` for
schemathesis). Prints for each run the test cases generated, the failures by check with their
operations, every answer by status, the 5xx answers, and schemathesis' own account of each failing case
(with a ``curl`` line that reproduces it).

Schemathesis gets a virtual environment of its own under ``build/schemathesis/`` (created on the first
run), so its dependencies never meet the project's. The model: ``--model-repository``, else ``models/``
when present, else the shipped digits checkpoint exported at 32x32 into ``build/schemathesis/models``.
Reports (schemathesis' JSON and HAR files, its output, the server's log) are kept in
``build/schemathesis/runs/STAMP/{open,keyed}/``; ``st replay ID`` replays a failing case from there. The
exit status is 1 when a run found failures, errors or 5xx answers.

    python benchmarks/schemathesis_check.py --max-examples 20 --max-time 120
    python benchmarks/schemathesis_check.py --model-repository models --max-time 600 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "schemathesis"
DIGITS = ROOT / "niff" / "assets" / "digits_resnet.pt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, help="Default: models/ if present, else the digits model.")
    parser.add_argument("--max-examples", type=int, default=20, help="Test cases per operation and phase.")
    parser.add_argument("--max-time", type=int, default=120, help="Seconds per schemathesis run (it stops then).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--schemathesis", default="schemathesis>=4.0,<5", help="What pip installs into its venv.")
    parser.add_argument("--server-arg", action="append", default=[], help="Extra niff-serve option.")
    return parser.parse_args()


def schemathesis_venv(requirement: str) -> Path:
    """The ``schemathesis`` executable of build/schemathesis/venv, installed there first if need be."""
    venv = WORK / "venv"
    executable = venv / "bin" / "schemathesis"
    if not executable.exists():
        print(f"creating {venv} with {requirement}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", requirement], check=True)
    return executable


def model_repository(given: Path | None) -> Path:
    if given is not None:
        return given
    if (ROOT / "models").is_dir() and any((ROOT / "models").iterdir()):
        return ROOT / "models"
    repository = WORK / "models"
    if not (repository / DIGITS.stem).is_dir():
        print(f"exporting {DIGITS.name} at 32x32 into {repository}", flush=True)
        command = [sys.executable, "-m", "niff_export.cli", str(DIGITS), "--size", "32", "--out", str(repository)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return repository


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m niff_serve`` on 127.0.0.1 and free ports, one worker process, its log in ``log``."""

    def __init__(self, repository: Path, api_key: str | None, log: Path, extra: list[str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "niff_serve", "--model-repository", str(repository)]
        command += ["--port", self.url.rsplit(":", 1)[1], "--grpc-port", str(free_port()), "--workers", "1"]
        command += ["--device", "cpu", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
        if api_key is not None:
            env["NIFF_API_KEY"] = api_key
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start; its log: {log}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_schemathesis(executable: Path, url: str, api_key: str | None, args: argparse.Namespace, out: Path) -> dict:
    """One schemathesis run; its JSON report, with the HAR record's statuses and 5xx answers added."""
    out.mkdir(parents=True, exist_ok=True)
    command = [str(executable), "run", f"{url}/openapi.json", "--checks", "all"]
    command += ["--max-examples", str(args.max_examples), "--max-time", str(args.max_time), "--seed", str(args.seed)]
    command += ["--report", "json,har", "--report-dir", str(out), "--no-color"]
    command += ["--report-json-path", str(out / "report.json"), "--report-har-path", str(out / "har.json")]
    if api_key is not None:
        command += ["-H", f"Authorization: Bearer {api_key}"]
    with (out / "schemathesis.txt").open("wb") as text:
        # Shrinking and the last requests may run past --max-time; a hung run does not hold the harness.
        # In the run's folder: schemathesis and Hypothesis keep their databases in the working directory.
        subprocess.run(command, stdout=text, stderr=subprocess.STDOUT, timeout=args.max_time + 600, cwd=out)
    report = json.loads((out / "report.json").read_text())
    entries = json.loads((out / "har.json").read_text())["log"]["entries"]
    report["statuses"] = Counter(entry["response"]["status"] for entry in entries)
    report["server_errors"] = [
        (entry["request"]["method"], entry["request"]["url"], entry["response"]["status"])
        for entry in entries
        if entry["response"]["status"] >= 500
    ]
    report["output"] = (out / "schemathesis.txt").read_text(errors="replace")
    return report


def failure_cases(output: str) -> str:
    """Schemathesis' FAILURES section: each failing case, what was wrong, the answer and a curl line."""
    match = re.search(r"^=+ FAILURES =+$(.*?)^=+ SUMMARY =+$", output, re.S | re.M)
    return match.group(1).strip() if match else ""


def summarize(name: str, report: dict) -> None:
    cases = report["test_cases"]
    print(f"\n## {name}\n")
    version, seconds, stop = report["schemathesis_version"], report["running_time"], report["stop_reason"]
    print(f"schemathesis {version}, {seconds:.0f} s, stop: {stop}")
    print(f"operations tested: {report['operations']['tested']}/{report['operations']['total']}")
    print(
        f"test cases: {cases['generated']} generated, "
        f"{cases['with_failures']} with failures, {cases['errored']} errored"
    )
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(report["statuses"].items()))
    print(f"answers by status: {statuses}")
    print(f"5xx answers: {len(report['server_errors'])}")
    for method, url, status in report["server_errors"][:20]:
        print(f"  {status} {method} {url}")
    print("failures by check:" if report["failures"] else "failures by check: none")
    for failure in report["failures"]:
        print(f"  {failure['code']} {failure['title']}: {failure['count']}")
        for operation in failure["operations"]:
            print(f"    {operation}")
    for error in report["errors"]:
        print(f"  error: {json.dumps(error)[:300]}")
    cases_text = failure_cases(report["output"])
    if cases_text:
        print(f"\n<details><summary>failing cases ({name})</summary>\n\n```\n{cases_text}\n```\n</details>")


def main() -> None:
    args = parse_args()
    executable = schemathesis_venv(args.schemathesis)
    repository = model_repository(args.model_repository)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    found = False
    for name, api_key in (("without an API key", None), ("with an API key", secrets.token_hex(16))):
        out = WORK / "runs" / stamp / ("keyed" if api_key else "open")
        out.mkdir(parents=True, exist_ok=True)
        server = Server(repository, api_key, out / "server.log", args.server_arg)
        try:
            report = run_schemathesis(executable, server.url, api_key, args, out)
        finally:
            server.stop()
        summarize(name, report)
        found = found or bool(report["failures"] or report["server_errors"] or report["errors"])
    print(f"\nmodel repository: {repository}; reports in {WORK / 'runs' / stamp}")
    raise SystemExit(1 if found else 0)


if __name__ == "__main__":
    main()
