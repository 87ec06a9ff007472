"""The API contract reads on its own: every service, RPC, message, field and enum is commented,
and enum values carry their enum's prefix (the style protobuf's style guide and buf lint ask for)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO = "recbandit/v1/recbandit.proto"

# Paths of a FileDescriptorProto's source locations (descriptor.proto's field numbers)
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, NESTED_MESSAGE, NESTED_ENUM = 2, 3, 4
ENUM_VALUE, METHOD = 2, 2


def compiled(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp_path / "recbandit.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", "--include_source_info",
                    f"--descriptor_set_out={out}", PROTO], check=True, capture_output=True)
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return next(f for f in files.file if f.name == PROTO)


def uncommented(proto: descriptor_pb2.FileDescriptorProto) -> list[str]:
    comments = {tuple(location.path): (location.leading_comments + location.trailing_comments).strip()
                for location in proto.source_code_info.location}
    missing: list[str] = []

    def need(path: tuple[int, ...], name: str) -> None:
        if not comments.get(path):
            missing.append(name)

    def message(path: tuple[int, ...], described: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = f"{prefix}{described.name}"
        need(path, name)
        for i, field in enumerate(described.field):
            if not described.options.map_entry:
                need((*path, FIELD, i), f"{name}.{field.name}")
        for i, nested in enumerate(described.nested_type):
            if not nested.options.map_entry:
                message((*path, NESTED_MESSAGE, i), nested, f"{name}.")
        for i, enum in enumerate(described.enum_type):
            need((*path, NESTED_ENUM, i), f"{name}.{enum.name}")

    for i, described in enumerate(proto.message_type):
        message((MESSAGE, i), described, "")
    for i, enum in enumerate(proto.enum_type):
        need((ENUM, i), enum.name)
    for i, service in enumerate(proto.service):
        need((SERVICE, i), service.name)
        for j, method in enumerate(service.method):
            need((SERVICE, i, METHOD, j), f"{service.name}.{method.name}")
    return missing


def test_every_service_rpc_message_field_and_enum_is_commented(tmp_path: Path) -> None:
    assert uncommented(compiled(tmp_path)) == []


def test_enum_values_carry_their_enum_prefix_and_each_enum_is_defined_once(tmp_path: Path) -> None:
    proto = compiled(tmp_path)
    enums = list(proto.enum_type) + [e for m in proto.message_type for e in m.enum_type]
    for enum in enums:
        prefix = _prefix(enum.name)
        assert [v.name for v in enum.value if not v.name.startswith(prefix)] == [], enum.name
        assert enum.value[0].name == prefix + "UNSPECIFIED" and enum.value[0].number == 0
    value_sets = [tuple(v.name.removeprefix(_prefix(e.name)) for v in e.value) for e in enums]
    assert len(value_sets) == len(set(value_sets)), "two enums with the same values: define one and use it twice"


def _prefix(enum_name: str) -> str:
    """``LearningVerdict`` → ``LEARNING_VERDICT_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"
