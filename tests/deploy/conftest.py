"""Fixtures for the deployment checks; the readers they use live in deploy_support.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

# The test modules import deploy_support by name (pytest runs with --import-mode=importlib, which
# puts no test folder on sys.path).
sys.path.insert(0, str(Path(__file__).parent))

from deploy_support import (
    ROOT,
    Dockerfile,
    parse_dockerfile,
    settings_class,
)


@pytest.fixture(scope="session")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(ROOT / "Dockerfile")


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, minimal model repository (docs/model-repository.md), built without torch."""
    import tiny_onnx

    root = tmp_path_factory.mktemp("models")
    tiny_onnx.write_folder(root, "tiny", size=32, labels=("red", "green", "blue", "grey"))
    return root


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app niff-serve builds, not started (nothing loaded), with an API key so that the tests see
    which paths stay open without one."""
    from niff_serve.process.serving import create_app

    repository = tmp_path_factory.mktemp("empty-repository")
    return create_app(settings_class()(model_repository=repository, api_key="deploy-test-key"))
