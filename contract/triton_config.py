"""``config.pbtxt``: Triton's model configuration, written and read with Triton's own protobuf schema.

The schema (``inference.ModelConfig``) comes compiled with ``tritonclient``; protobuf's text format
parses and prints it, so a field Triton does not know is an error here too. The batching values in it
(``max_batch_size``, ``dynamic_batching.max_queue_delay_microseconds``) are the ones niff-serve uses
for the model unless its settings override them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from niff_contract.errors import MAX_DETAIL, ContractError, one_line
from niff_contract.schema import LABELS_FILE, Manifest

ModelConfig = model_config_pb2.ModelConfig
DEFAULT_MAX_QUEUE_DELAY_US = 5000
# Batches of one model that one server runs at once.
MAX_INSTANCES = 16


def model_config(
    manifest: Manifest,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    *,
    versions: Iterable[int] = (),
    latest: int | None = None,
) -> ModelConfig:
    """The Triton configuration of a model folder described by ``manifest``.

    Its ``version_policy`` lists ``versions`` and niff.json's version (``specific``: the versions present in
    the folder), or, with ``latest``, is ``latest { num_versions: latest }`` (Triton serves the ``latest``
    highest-numbered versions present).
    """
    fp32 = model_config_pb2.TYPE_FP32
    if latest is None:
        policy = model_config_pb2.ModelVersionPolicy(
            specific=model_config_pb2.ModelVersionPolicy.Specific(versions=sorted({*versions, manifest.version}))
        )
    else:
        policy = model_config_pb2.ModelVersionPolicy(
            latest=model_config_pb2.ModelVersionPolicy.Latest(num_versions=latest)
        )
    return ModelConfig(
        name=manifest.name,
        platform=manifest.platform,
        max_batch_size=manifest.max_batch_size,
        input=[model_config_pb2.ModelInput(name=manifest.input.name, data_type=fp32, dims=manifest.input.shape)],
        output=[
            model_config_pb2.ModelOutput(
                name=manifest.output.name, data_type=fp32, dims=manifest.output.shape, label_filename=LABELS_FILE
            )
        ],
        dynamic_batching=model_config_pb2.ModelDynamicBatching(max_queue_delay_microseconds=max_queue_delay_us),
        version_policy=policy,
        # One instance on the device the server finds (KIND_AUTO), as Triton does without the field.
        instance_group=[model_config_pb2.ModelInstanceGroup(count=1)],
    )


def config_text(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(text: str) -> ModelConfig:
    """The configuration in ``text``; a ContractError of one line (the parser's message cut short) otherwise."""
    try:
        return text_format.Parse(text, ModelConfig())
    except (text_format.ParseError, ValueError, RecursionError) as exc:
        detail = one_line(str(exc) or type(exc).__name__, MAX_DETAIL)
        raise ContractError(f"config.pbtxt is not a Triton model configuration: {detail}") from None


def config_json(config: ModelConfig) -> dict[str, Any]:
    """The configuration as Triton's HTTP API shows it (proto field names, 64-bit numbers as numbers)."""
    return message_json(config)


def message_json(message: Message, *, with_defaults: bool = False) -> dict[str, Any]:
    """Any of Triton's protobuf messages as its HTTP API shows them; ``with_defaults`` keeps zero fields."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=with_defaults
    )
    return _int64_as_numbers(message, data)


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _int64_as_numbers(message: Message, data: dict[str, Any]) -> dict[str, Any]:
    """protobuf's JSON mapping writes 64-bit integers as strings; Triton's own JSON writes numbers."""
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value = getattr(message, field.name)
        repeated = isinstance(data[field.name], list)
        if field.type in _INT64:
            data[field.name] = [int(v) for v in data[field.name]] if repeated else int(data[field.name])
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                items = value.items() if field.message_type.fields_by_name["value"].message_type else ()
                for key, item in items:
                    _int64_as_numbers(item, data[field.name][str(key)])
            elif repeated:
                for item, item_data in zip(value, data[field.name], strict=True):
                    _int64_as_numbers(item, item_data)
            else:
                _int64_as_numbers(value, data[field.name])
    return data


def check_config(config: ModelConfig, manifest: Manifest, present: Sequence[int] | None = None) -> None:
    """config.pbtxt must describe the same model as niff.json; a ContractError names the first difference.

    ``present``: the version folders of the model folder (:func:`niff_contract.folder.version_folders`).
    Its ``version_policy`` must serve niff.json's version (the one niff-serve serves); other versions it
    lists may be absent, and are served by nobody here.
    """
    expected = model_config(manifest, config.dynamic_batching.max_queue_delay_microseconds)
    for field in ("name", "platform", "max_batch_size"):
        if getattr(config, field) != getattr(expected, field):
            raise ContractError(
                f"config.pbtxt: {field} is {getattr(config, field)!r}, niff.json says {getattr(expected, field)!r}"
            )
    _check_version_policy(config, manifest.version, present)
    instance_groups(config)
    for section in ("input", "output"):
        want = getattr(expected, section)[0]
        found = {tensor.name: tensor for tensor in getattr(config, section)}.get(want.name)
        if found is None:
            raise ContractError(f"config.pbtxt: no {section} named {want.name!r}")
        if found.data_type != want.data_type or list(found.dims) != list(want.dims):
            raise ContractError(
                f"config.pbtxt: {section} {want.name!r} is {model_config_pb2.DataType.Name(found.data_type)} "
                f"{list(found.dims)}, niff.json says TYPE_FP32 {list(want.dims)}"
            )


def instance_groups(config: ModelConfig) -> tuple[int, str]:
    """How many instances of the model run at once, and on what: ``"auto"``, ``"cpu"`` or ``"gpu"`` (Triton's
    ``instance_group``; one instance on the device found when the file has none). A ContractError for what
    one server process cannot honour: groups of different kinds, or kind KIND_MODEL."""
    groups = list(config.instance_group) or [model_config_pb2.ModelInstanceGroup(count=1)]
    kinds = {model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) for group in groups}
    if len(kinds) > 1 or "KIND_MODEL" in kinds:
        raise ContractError(f"config.pbtxt: instance_group kinds {sorted(kinds)}; niff-serve runs one kind per model")
    count = sum(max(group.count, 1) for group in groups)
    if count > MAX_INSTANCES:
        raise ContractError(f"config.pbtxt: instance_group asks for {count} instances; at most {MAX_INSTANCES}")
    return count, kinds.pop().removeprefix("KIND_").lower()


def policy_versions(config: ModelConfig, present: Sequence[int]) -> list[int]:
    """The versions of ``present`` that Triton serves under ``config``'s ``version_policy`` (Triton's
    default, ``latest { num_versions: 1 }``, when it has none), ascending."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(present)
    if which == "specific":
        return sorted(set(policy.specific.versions) & set(present))
    count = policy.latest.num_versions if which == "latest" else 1
    return sorted(present)[-count:] if count else []


def _check_version_policy(config: ModelConfig, version: int, present: Sequence[int] | None) -> None:
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "specific" and version not in policy.specific.versions:
        listed = sorted(policy.specific.versions)
        raise ContractError(
            f"config.pbtxt: version_policy serves versions {listed}, not version {version} of niff.json"
        )
    if which in ("latest", None) and present is not None and version not in policy_versions(config, present):
        policy_said = (
            f"'s version_policy serves the latest {policy.latest.num_versions}"
            if which == "latest"
            else " has no version_policy, so Triton serves the latest 1"
        )
        raise ContractError(
            f"config.pbtxt{policy_said} of versions {list(present)}, not version {version} of niff.json"
        )
