"""The OpenAPI document as this server runs: what a generated client or a schema-driven fuzzer may rely on.

The routes declare the bearer scheme and an open-ended ``top_k``; the served document narrows both to
the running server: no security requirement when it has no API key (every endpoint is open then), and
``top_k`` bounded by the most classes any served model has.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from niff_serve.runtime import ServiceState


def served_openapi(app: FastAPI, state: ServiceState) -> Callable[[], dict[str, Any]]:
    """A replacement for ``app.openapi`` that adapts FastAPI's (cached) document to ``state``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        document = copy.deepcopy(generate())
        operations = [op for item in document.get("paths", {}).values() for op in item.values()]
        if state.settings.api_key is None:
            document.get("components", {}).pop("securitySchemes", None)
            for operation in operations:
                operation.pop("security", None)
        classes = [runtime.folder.num_classes for runtime in state.models.values()]
        if classes:
            for operation in operations:
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "top_k":
                        parameter["schema"]["maximum"] = max(classes)
        return document

    return openapi
