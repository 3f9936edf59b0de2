"""What ``niff-export``, ``niff-report`` and ``niff-eval`` share: the checkpoint options, options generated from
an option record (``options.option``), and one way of turning a failure into one line and an exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import niff
from niff_contract import ContractError
from niff_export.errors import ExportError
from niff_export.options import Option, default_of, flag_of, option_fields, positive_int, shown, size_argument

# The checkpoint options' names, as ``export_checkpoint``, ``report_checkpoint`` and ``evaluate_checkpoint`` take them.
CHECKPOINT_ARGUMENTS = ("arch", "num_classes", "trust_pickle", "ema")

# How to resolve a checkpoint problem (``niff.CheckpointError.option``), in the commands' option names.
ADVICE = {
    "arch": "pass --arch NAME ({prog} --help lists the names)",
    "trust_pickle": "loading them can run code; if you trust the file, pass --trust-pickle",
    "ema": "leave out --ema for its model weights",
}


def add_checkpoint_options(
    parser: argparse.ArgumentParser,
    verb: str,
    *,
    checkpoint: str = "checkpoint",
    checkpoint_help: str = "checkpoint file: a state_dict or a training checkpoint (.pt/.pth)",
    size_required: bool = True,
) -> None:
    """The checkpoint to read and how: its path, --size, --arch, --num-classes, --ema, --trust-pickle."""
    parser.add_argument(checkpoint, type=Path, help=checkpoint_help)
    parser.add_argument(
        "--size",
        type=size_argument,
        required=size_required,
        help="input side length in pixels, e.g. 224 (square)" + ("" if size_required else "; for a checkpoint"),
    )
    parser.add_argument(
        "--arch",
        metavar="NAME",
        help="zoo architecture (default: read from the checkpoint's keys); one of: " + ", ".join(niff.list_models()),
    )
    parser.add_argument(
        "--num-classes", type=positive_int, metavar="N", help="class count (default: read from the head)"
    )
    parser.add_argument("--ema", action="store_true", help=f"{verb} the EMA weights of a training checkpoint")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a checkpoint holding pickled Python objects (a whole nn.Module); loading one can run code",
    )


def checkpoint_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed checkpoint options as the ``*_checkpoint`` functions' keyword arguments."""
    return {name: getattr(args, name) for name in CHECKPOINT_ARGUMENTS}


def add_record_options(parser: argparse.ArgumentParser, record: type, prefix: str = "") -> None:
    """One option per field of an option record, its default, choices and help from the field's ``Option``.

    Unset options stay out of the parsed namespace (``record_from_args`` leaves them to the record's
    defaults); a record-valued field's options form an argument group, a mapping's too (one per key).
    """
    for item, spec in option_fields(record):
        dest = prefix + item.name
        if spec.record is not None or spec.keys:
            group = parser.add_argument_group(*spec.group) if spec.group else parser
            if spec.record is not None:
                add_record_options(group, spec.record, dest + ".")  # type: ignore[arg-type]
            for key, key_spec in spec.keys:
                _add_option(group, f"{dest}.{key}", flag_of(key, key_spec), key_spec, None)
        else:
            _add_option(parser, dest, flag_of(item.name, spec), spec, default_of(item))


def option_help(spec: Option, default: Any) -> str:
    return spec.help.replace("{default}", shown(default))


def _add_option(parser: Any, dest: str, flag: str, spec: Option, default: Any) -> None:
    if isinstance(default, bool):  # a switch
        parser.add_argument(
            flag, dest=dest, action="store_true", default=argparse.SUPPRESS, help=option_help(spec, default)
        )
        return
    parser.add_argument(
        flag,
        dest=dest,
        type=spec.parse,
        choices=spec.choices,
        metavar=spec.metavar,
        default=argparse.SUPPRESS,
        help=option_help(spec, default),
    )


def record_from_args(record: type, args: argparse.Namespace, prefix: str = "") -> Any:
    """The option record the command line asks for: the given options, the record's defaults for the rest
    (a record-valued field stays None when none of its options is given)."""
    given = vars(args)
    values: dict[str, Any] = {}
    for item, spec in option_fields(record):
        dest = prefix + item.name
        if spec.record is not None:
            if any(name.startswith(dest + ".") for name in given):
                values[item.name] = record_from_args(spec.record, args, dest + ".")
        elif spec.keys:
            values[item.name] = {key: given[f"{dest}.{key}"] for key, _ in spec.keys if f"{dest}.{key}" in given}
        elif dest in given:
            values[item.name] = spec.load(given[dest]) if spec.load else given[dest]
    return record(**values)


def error_message(exc: BaseException, prog: str) -> str:
    """What went wrong, with a checkpoint problem's advice worded in the command's option names."""
    cause = exc.__cause__
    if isinstance(cause, niff.CheckpointError) and cause.option in ADVICE:
        return f"{cause.problem}; {ADVICE[cause.option].format(prog=prog)}"
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def run(
    prog: str,
    command: Callable[[], int],
    *,
    status: int = 1,
    interrupted: str = "interrupted",
    before_message: Callable[[], None] = lambda: None,
) -> int:
    """Run a command's body: an ExportError, ContractError or OSError ends it with ``PROG: error: …`` on stderr and
    ``status``, Ctrl-C with ``PROG: interrupted`` and 130; never with a traceback. ``before_message`` ends a
    progress line the failure left open."""
    try:
        return command()
    except (ExportError, ContractError, OSError) as exc:
        before_message()
        print(f"{prog}: error: {error_message(exc, prog)}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        before_message()
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
