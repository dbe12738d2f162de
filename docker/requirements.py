"""Write the pip inputs of the image: the project's dependencies and pins for the preinstalled torch.

    python requirements.py PYPROJECT OUT_DIR

writes OUT_DIR/requirements.txt (the `[project] dependencies` of PYPROJECT) and OUT_DIR/constraints.txt
(`==` pins for the torch packages the base image already has). Installing the first under the second
keeps the base image's CUDA build of torch; when pyproject.toml's torch range excludes it, pip stops
with a conflict instead of downloading another torch.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the parser that pip vendors
    from pip._vendor import tomli as tomllib

PREINSTALLED = ("torch", "torchvision", "torchaudio")


def dependencies(pyproject: str) -> list[str]:
    with open(pyproject, "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def pins() -> list[str]:
    out = []
    for name in PREINSTALLED:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    pyproject, out_dir = argv
    os.makedirs(out_dir, exist_ok=True)
    for name, lines in (("requirements.txt", dependencies(pyproject)), ("constraints.txt", pins())):
        with open(os.path.join(out_dir, name), "w") as f:
            f.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
