"""Wheels that let the bare GPU machine run the check: `python -m bench.device_check.wheels`.

Run it here (pip reaches PyPI here, nothing does there). It writes, for the GPU image's Python
3.12 on x86-64, every distribution the project and the openai SDK need at run time, at the
versions installed here (what CI tested), except torch and the numeric stack the image ships.
The image has an older grpcio/protobuf than the generated code needs and no bitsandbytes,
FastAPI or soundfile, so carrying the whole closure is simpler than guessing which are missing.
bitsandbytes' wheel (43 MB: one library per CUDA and ROCm version) is cut down to its CPU and
CUDA 13 libraries, to stay inside the 64 MiB a device call carries.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DEFAULT_FOLDER = Path("bench/results/device-wheels")
ROOTS = ("autoglm-serve", "openai")
# In the GPU image already, built for its CUDA: never replaced.
IMAGE_PROVIDES = {"torch", "numpy", "scipy", "pillow", "triton", "sympy", "networkx", "mpmath"}
# pip matches manylinux tags exactly: name every glibc a wheel here is built for.
PLATFORMS = ["manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34))]
# bitsandbytes picks its library by the CUDA torch was built with (13.0 on the image).
BNB_KEEP = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")


def closure() -> dict[str, str]:
    """name -> installed version of every run-time dependency of ROOTS, transitively."""
    found: dict[str, str] = {}
    pending = list(ROOTS)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in found or name in IMAGE_PROVIDES or name.startswith("nvidia-"):
            continue
        found[name] = metadata.version(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    del found[canonicalize_name(ROOTS[0])]  # the project itself travels as source
    return found


def download(versions: dict[str, str], folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += [f"{name}=={version}" for name, version in sorted(versions.items())]
    subprocess.run(command, check=True)


def trim_bitsandbytes(wheel: Path) -> None:
    """Rewrite the wheel without the libraries the GPU image cannot use, RECORD to match."""
    trimmed = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w") as target:
        for item in source.infolist():
            name = item.filename
            if dropped(name):
                continue
            data = source.read(name)
            if name.endswith(".dist-info/RECORD"):
                data = _filtered_record(data)
            target.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
    trimmed.replace(wheel)


def dropped(path: str) -> bool:
    return path.endswith(".so") and not BNB_KEEP.search(path)


def _filtered_record(record: bytes) -> bytes:
    """RECORD (one ``path,hash,size`` per line) without the dropped libraries' lines."""
    kept = [line for line in record.decode().splitlines() if not dropped(line.split(",")[0])]
    return ("\n".join(kept) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    versions = closure()
    download(versions, args.folder)
    for wheel in args.folder.glob("bitsandbytes-*.whl"):
        trim_bitsandbytes(wheel)
    total = sum(wheel.stat().st_size for wheel in args.folder.glob("*.whl"))
    print(f"{len(versions)} wheels, {total / 2**20:.1f} MiB in {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
