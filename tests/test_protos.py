"""proto/ is self-contained: every file compiles with only `-Iproto` and protoc's well-known types, so any language
generates its stubs from proto/ alone; the vendored google.rpc protos describe the details the service sends."""

from __future__ import annotations

from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
WELL_KNOWN = Path(grpc_tools.__file__).parent / "_proto"


def compile_all(out: Path) -> descriptor_pb2.FileDescriptorSet:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    status = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{WELL_KNOWN}", f"--descriptor_set_out={out}", *protos]
    )
    assert status == 0, "protoc failed: see its messages above"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_the_only_outside_protos_are_protocs_well_known_types() -> None:
    # What -I{WELL_KNOWN} adds is google/protobuf and nothing else, so compiling below proves proto/ needs no more.
    assert {p.parent.relative_to(WELL_KNOWN).as_posix() for p in WELL_KNOWN.rglob("*.proto")} <= {
        "google/protobuf",
        "google/protobuf/compiler",
    }


def test_every_proto_compiles_from_proto_alone(tmp_path: Path) -> None:
    files = {f.name for f in compile_all(tmp_path / "all.pb").file}
    assert {
        "wacall/v1/calling.proto",
        "wacall/v1/contact_center.proto",
        "wacall/sim/v1/simulator.proto",
        "wacall/testing/v1/clock.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "google/rpc/code.proto",
    } <= files


def test_vendored_error_protos_match_what_the_python_libraries_decode(tmp_path: Path) -> None:
    messages = {
        f"{f.package}.{m.name}": m
        for f in compile_all(tmp_path / "all.pb").file
        if f.package == "google.rpc"
        for m in f.message_type
    }
    for library in (
        status_pb2.Status,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.BadRequest,
        error_details_pb2.ErrorInfo,
        error_details_pb2.ResourceInfo,
    ):
        vendored = messages[library.DESCRIPTOR.full_name]
        expected = descriptor_pb2.DescriptorProto()
        library.DESCRIPTOR.CopyToProto(expected)
        assert [(f.name, f.number, f.type) for f in vendored.field] == [
            (f.name, f.number, f.type) for f in expected.field
        ]


def test_license_headers_are_kept() -> None:
    for path in (PROTO_ROOT / "google" / "rpc").glob("*.proto"):
        assert "Licensed under the Apache License, Version 2.0" in path.read_text(), path
