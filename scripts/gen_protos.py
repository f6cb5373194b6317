"""Generate the Python stubs for proto/ into clients/python/wacall_client (or check that they are current).

The protos live under proto/wacall/..., so protoc writes modules named wacall.v1.calling_pb2 and so on. The stubs
ship inside the client library under wacall_client.v1 etc. (one importable name, no generic top-level packages), so
the generated cross-module imports are rewritten from "wacall." to "wacall_client.". Nothing else is touched.
proto/google/ (the vendored google.rpc protos, for other languages) is not generated: Python has them from
googleapis-common-protos.

    python scripts/gen_protos.py          # regenerate
    python scripts/gen_protos.py --check  # exit 1 if the committed stubs are stale
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
TARGET = ROOT / "clients" / "python" / "wacall_client"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
IMPORT_RE = re.compile(r"^(from|import) wacall\.", re.MULTILINE)


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "wacall").rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated_root = out / "wacall"
    for path in generated_root.rglob("*"):
        if path.is_file():
            text = path.read_text()
            path.write_text(IMPORT_RE.sub(lambda m: f"{m.group(1)} wacall_client.", text))
    for directory in [generated_root, *[d for d in generated_root.rglob("*") if d.is_dir()]]:
        if directory != generated_root:
            (directory / "__init__.py").touch()


def generated_files(base: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(base)): p
        for p in base.rglob("*")
        if p.is_file()
        and (p.name.endswith(GENERATED_SUFFIXES) or (p.name == "__init__.py" and p.parent != base))
        and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs differ from fresh ones")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = generated_files(out / "wacall")
        current = {
            name: path
            for name, path in generated_files(TARGET).items()
            if not name.startswith(("_", "client", "py.typed"))
        }
        current = {n: p for n, p in current.items() if "/" in n}
        if options.check:
            stale = sorted(
                set(fresh) ^ set(current)
                | {n for n in set(fresh) & set(current) if not filecmp.cmp(fresh[n], current[n], shallow=False)}
            )
            if stale:
                print("generated stubs are stale; run `make proto`:", *stale, sep="\n  ", file=sys.stderr)
                return 1
            print(f"generated stubs are current ({len(fresh)} files)")
            return 0
        for name in current:
            if name not in fresh:
                current[name].unlink()
        for name, path in fresh.items():
            dest = TARGET / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        print(f"wrote {len(fresh)} files under {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
