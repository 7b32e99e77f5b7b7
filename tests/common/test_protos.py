"""The committed gRPC code is exactly what grpcio-tools generates from the .proto files."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

grpc_tools = pytest.importorskip("grpc_tools")
from grpc_tools import protoc  # noqa: E402

PROTOS = Path(__file__).parents[2] / "protos"
PACKAGE = PROTOS / "autoglm" / "v1"


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PACKAGE.glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    status = protoc.main(
        ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *sources]
    )  # fmt: skip
    assert status == 0
    generated = sorted(p.name for p in (tmp_path / "autoglm" / "v1").iterdir())
    committed = sorted(
        p.name
        for p in PACKAGE.iterdir()
        if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    )
    assert generated == committed, "run `make protos` and commit the result"
    _, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "autoglm" / "v1", PACKAGE, generated, shallow=False
    )
    assert not mismatch and not errors, (
        f"stale generated code: {mismatch + errors}; run `make protos`"
    )


def test_generated_modules_import_as_a_package() -> None:
    from autoglm.v1 import audio_pb2_grpc, decoder_pb2_grpc, vision_pb2_grpc

    assert decoder_pb2_grpc.DecoderStub and vision_pb2_grpc.VisionEncoderStub
    assert audio_pb2_grpc.AudioEncoderStub
