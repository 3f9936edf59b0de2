"""The package's architecture, checked from its source: service/ in layers, no import cycles.

``core`` (settings, models, data plane, batching, protocol rules) knows no web or RPC framework;
``http`` and ``grpc`` are transports on top of it that do not know each other; ``process`` composes
them into running servers. The service never imports the training or export code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

SERVICE = Path(__file__).resolve().parents[2] / "service"
LAYERS = ("core", "http", "grpc", "process")
FRAMEWORKS = {"fastapi", "starlette", "uvicorn", "grpc"}
# What each layer may import of the package's other layers.
ALLOWED = {"core": {"core"}, "http": {"core", "http"}, "grpc": {"core", "grpc"}, "process": set(LAYERS)}


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE).with_suffix("").parts
    return ".".join(("niff_serve", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(path): imports(path) for path in sorted(SERVICE.rglob("*.py"))}


def package_imports(module: str) -> set[str]:
    return {name for name in MODULES[module] if name in MODULES and name != module}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer():
    outside = [m for m in MODULES if layer(m) is None and m.split(".")[-1] not in ("niff_serve", "__main__", "version")]
    assert not outside, f"modules outside core/http/grpc/process: {outside}"


@pytest.mark.parametrize("name", LAYERS)
def test_layer_imports_only_what_it_may(name: str):
    wrong = {
        module: sorted(other for other in package_imports(module) if layer(other) not in ALLOWED[name] | {None})
        for module in MODULES
        if layer(module) == name
    }
    assert not {m: w for m, w in wrong.items() if w}, f"{name} imports layers it must not: {wrong}"


def test_core_knows_no_framework():
    used = {m: sorted(FRAMEWORKS & {i.split(".")[0] for i in MODULES[m]}) for m in MODULES if layer(m) == "core"}
    assert not {m: u for m, u in used.items() if u}, used


def test_transports_do_not_use_each_others_framework():
    http = {m: sorted({"grpc"} & {i.split(".")[0] for i in MODULES[m]}) for m in MODULES if layer(m) == "http"}
    grpc = {
        m: sorted({"fastapi", "starlette", "uvicorn"} & {i.split(".")[0] for i in MODULES[m]})
        for m in MODULES
        if layer(m) == "grpc"
    }
    assert not {m: u for m, u in (http | grpc).items() if u}


def test_service_never_imports_training_or_export_code():
    used = {m: sorted(i for i in MODULES[m] if i.split(".")[0] in ("niff", "niff_export")) for m in MODULES}
    assert not {m: u for m, u in used.items() if u}, used


def test_no_import_cycles():
    visiting: list[str] = []
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append([*visiting[visiting.index(module) :], module])
            return
        visiting.append(module)
        for other in sorted(package_imports(module)):
            visit(other)
        visiting.pop()
        done.add(module)

    for module in sorted(MODULES):
        visit(module)
    assert not cycles, f"import cycles: {cycles}"
