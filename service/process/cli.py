"""``niff-serve``: validate settings and the model repository, then run uvicorn until SIGTERM.

Options mirror :class:`~niff_serve.core.settings.Settings` one to one (``--max-batch-size`` is
``NIFF_MAX_BATCH_SIZE``) and override the environment. Bad settings or an unusable model folder end
the process with one line on stderr and exit status 2; a port that cannot be bound (checked before any
model loads), or a model that fails to load or warm up, ends it with status 1. SIGTERM and Ctrl-C (SIGINT)
both drain: no new connections, the requests in flight are answered; Ctrl-C then exits with status 130.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from typing import Literal, get_args, get_origin

from pydantic import ValidationError
from pydantic_settings import SettingsError

from niff_contract import ContractError, describe_errors, scan_repository
from niff_serve.core.backends import choose_backend
from niff_serve.core.errors import ConfigurationError
from niff_serve.core.logs import configure_logging
from niff_serve.core.ports import check_port
from niff_serve.core.settings import ENV_PREFIX, Settings, env_name, unknown_env_names
from niff_serve.grpc.server import check_grpc_port
from niff_serve.process.exit import PROG, fail
from niff_serve.process.serving import serve
from niff_serve.process.workers import inference_count, split_topology, supervise, worker_count
from niff_serve.version import __version__


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """One option per setting, its help text taken from the setting's description."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve every model folder of a model repository over HTTP (REST classify and KServe v2) "
        "and gRPC (KServe v2).",
        epilog="Every option can also be set by its environment variable; the command line wins.",
    )
    for name, field in Settings.model_fields.items():
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = "see above"
        else:
            default = "unset" if field.default is None else f"{field.default}".lower()
        help_text = f"{field.description} [env {env_name(name)}; default: {default}]"
        if field.annotation is bool:  # --ui / --no-ui
            parser.add_argument(
                option_name(name),
                dest=name,
                default=argparse.SUPPRESS,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
            continue
        parser.add_argument(
            option_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices,
            metavar=name.split("_")[-1].upper() if choices is None else None,
            help=help_text,
        )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    kserve = parser.add_argument_group(
        "KServe's transformer arguments",
        "KServe appends these to a transformer container's arguments (deploy/kserve/transformer/).",
    )
    kserve.add_argument(
        "--model_name", default=argparse.SUPPRESS, metavar="NAME", help="Ignored: every folder is served."
    )
    kserve.add_argument(
        "--predictor_host",
        default=argparse.SUPPRESS,
        metavar="HOST[:PORT]",
        help="The predictor's Service: --predictor grpc://HOST:PORT (port 80 when absent) unless --predictor is set.",
    )
    kserve.add_argument("--http_port", default=argparse.SUPPRESS, metavar="PORT", help="--port, unless that is set.")
    return parser


def kserve_arguments(values: dict[str, object]) -> dict[str, object]:
    """Settings from KServe's transformer arguments; the settings' own options win."""
    values.pop("model_name", None)
    host, port = values.pop("predictor_host", None), values.pop("http_port", None)
    if host is not None and "predictor" not in values:
        values["predictor"] = f"grpc://{host}" if ":" in str(host) else f"grpc://{host}:80"
    if port is not None and "port" not in values:
        values["port"] = port
    return values


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the command line; exits with a message when invalid."""
    args = build_parser().parse_args(argv)
    try:
        return Settings(**kserve_arguments(vars(args)))
    except ValidationError as exc:
        errors = describe_errors(exc.errors(), lambda f: f"{option_name(f)} / {env_name(f)}")
        fail(f"invalid settings: {errors}{_unknown_names()}")
    except SettingsError as exc:
        fail(f"invalid settings: {exc}{_unknown_names()}")


def _unknown_names() -> str:
    """The NIFF_* variables no setting reads, likely misspelt (NIFF_MODEL_REPO), as an addition to an error."""
    known = [name.upper() for name in Settings.model_fields]
    notes = []
    for name in unknown_env_names():
        close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), known, n=1)
        notes.append(f"{name} is not a known setting" + (f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""))
    return "".join(f"; {note}" for note in notes)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``niff-serve`` console script: check everything that can be checked cheaply, then serve."""
    settings = load_settings(argv)
    try:
        folders = scan_repository(settings.model_repository)
        # A transformer (--predictor) runs no model itself: it has no runtime to choose.
        devices = set() if settings.predictor else {choose_backend(folder, settings)[1] for folder in folders}
    except ContractError as exc:
        fail(str(exc))
    configure_logging(settings.log_level)
    device = "cuda" if "cuda" in devices else "cpu"
    split = split_topology(settings, device)
    workers = worker_count(settings, device, split)
    try:
        check_ports(settings)
        if workers == 1 and not split:
            serve(settings)
            return
        inference = inference_count(settings, device) if split else 0
        status = supervise(settings, workers, inference, gpus=device == "cuda")
    except ConfigurationError as exc:  # a port taken since its check
        fail(f"start-up failed: {exc}", status=1)
    if status:
        raise SystemExit(status)


def check_ports(settings: Settings) -> None:
    """Bind the HTTP and gRPC ports once each before any model loads: a port that something holds stops
    start-up with one line (several workers then share the gRPC port, each with SO_REUSEPORT)."""
    check_port(settings.host, settings.port)
    if settings.grpc_port:
        check_grpc_port(settings)
