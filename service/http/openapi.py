"""The OpenAPI document as this server runs: what a generated client or a schema-driven fuzzer may rely on.

The routes declare the bearer scheme and an open-ended ``top_k``; the served document narrows both to
the running server, so that every request it calls valid is one the server can accept:

- no security requirement when the server has no API key (every endpoint is open then);
- ``top_k`` at most the model's class count. One path cannot say that when the served models differ in
  classes (its bound would depend on the ``name`` parameter), so ``/v1/models/{name}:classify`` names the
  models with the most classes (an enum) and takes their count as its maximum, and every other model gets
  a path of its own, ``/v1/models/NAME:classify``, with its own maximum.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from niff_serve.core.state import ServiceState

CLASSIFY_PATH = "/v1/models/{name}:classify"


def served_openapi(app: FastAPI, state: ServiceState) -> Callable[[], dict[str, Any]]:
    """A replacement for ``app.openapi`` that adapts FastAPI's (cached) document to ``state``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = copy.deepcopy(generate())
        paths = document.get("paths", {})
        if state.settings.api_key is None:
            document.get("components", {}).pop("securitySchemes", None)
            for item in paths.values():
                for operation in item.values():
                    operation.pop("security", None)
        classes = {name: runtime.folder.num_classes for name, runtime in state.models.items()}
        if classes and CLASSIFY_PATH in paths:
            document["paths"] = classify_per_model(paths, classes)
        return document

    return openapi


def classify_per_model(paths: dict[str, Any], classes: dict[str, int]) -> dict[str, Any]:
    """``paths`` with the classify operation made exact for models of ``classes`` (name: class count)."""
    most = max(classes.values())
    operation = paths[CLASSIFY_PATH]["post"]
    widest = sorted(name for name, count in classes.items() if count == most)
    name_parameter = _parameter(operation, "name")
    name_parameter["schema"]["enum"] = widest
    _parameter(operation, "top_k")["schema"]["maximum"] = most
    if len(widest) < len(classes):
        name_parameter["description"] = f"A model with {most} classes; the others have paths of their own."
    own_paths = {}
    for name, count in sorted(classes.items()):
        if count == most:
            continue
        own = copy.deepcopy(operation)
        own["parameters"] = [p for p in own["parameters"] if not (p["name"] == "name" and p["in"] == "path")]
        _parameter(own, "top_k")["schema"]["maximum"] = count
        own["operationId"] = f"{operation['operationId']}_{name}"
        own["summary"] = f"Classify images with {name} ({count} classes)"
        own_paths[CLASSIFY_PATH.replace("{name}", name)] = {"post": own}
    result = {}
    for path, item in paths.items():
        result[path] = item
        if path == CLASSIFY_PATH:
            result.update(own_paths)
    return result


def _parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in operation.get("parameters", []) if p["name"] == name)
