"""Keeps ``pip install`` from replacing the TensorFlow that the base image ships.

The official ``tensorflow/tensorflow:<version>-gpu`` image already holds a TensorFlow build
matched to its CUDA libraries. ``pyproject.toml`` asks for ``tensorflow==2.21.*`` as well, and
an unconstrained ``pip install`` could swap that build (or the numpy/protobuf/CUDA wheels it was
built against) for another one from the index. This script, run inside the image at build time:

``freeze``        prints ``name==version`` for the TensorFlow stack already installed; used as
                  a pip constraints file, it makes every later install keep those versions or
                  fail loudly;
``requirements``  prints the project's dependencies from ``pyproject.toml`` (so the dependency
                  layer can be built before the source is copied);
``check FILE``    exits non-zero if anything pinned in FILE changed or vanished, or if a second
                  TensorFlow distribution appeared (e.g. ``tensorflow`` next to ``tensorflow-cpu``).

Only the standard library is used: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

#: Distributions TensorFlow's compiled code is bound to. Pure-Python helpers
#: (typing-extensions, packaging, ...) are left free so the server's own
#: dependencies can still resolve.
TF_DISTRIBUTIONS = frozenset({"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel"})
TF_STACK = TF_DISTRIBUTIONS | {"keras", "numpy", "ml-dtypes", "protobuf", "h5py", "grpcio",
                               "tensorboard", "tensorflow-io-gcs-filesystem"}
TF_STACK_PREFIXES = ("nvidia-",)  # CUDA/cuDNN wheels pulled in by ``tensorflow[and-cuda]``


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every installed distribution, by canonical name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def tf_stack(dists: dict[str, str]) -> dict[str, str]:
    """The subset of ``dists`` that belongs to TensorFlow's binary stack."""
    return {name: version for name, version in sorted(dists.items())
            if name in TF_STACK or name.startswith(TF_STACK_PREFIXES)}


def freeze(dists: dict[str, str]) -> str:
    """Constraints text pinning the installed TensorFlow stack."""
    pins = tf_stack(dists)
    if not TF_DISTRIBUTIONS & pins.keys():
        raise SystemExit("no TensorFlow distribution is installed: is the base image right?")
    return "".join(f"{name}=={version}\n" for name, version in pins.items())


def requirements(pyproject: Path) -> str:
    """The ``[project] dependencies`` of ``pyproject``, one per line."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return "".join(f"{dep}\n" for dep in project["dependencies"])


def check(pins_text: str, dists: dict[str, str]) -> list[str]:
    """What changed since ``pins_text`` was frozen; empty when nothing did."""
    pinned = dict(line.split("==", 1) for line in pins_text.split() if "==" in line)
    problems = [f"{name} {version} was replaced by {dists.get(name, 'nothing')}"
                for name, version in pinned.items() if dists.get(name) != version]
    tf_now = sorted(TF_DISTRIBUTIONS & dists.keys())
    if len(tf_now) > 1:
        problems.append(f"more than one TensorFlow distribution is installed: {tf_now}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("freeze")
    req = sub.add_parser("requirements")
    req.add_argument("pyproject", type=Path)
    chk = sub.add_parser("check")
    chk.add_argument("pins", type=Path)
    args = parser.parse_args(argv)
    if args.command == "freeze":
        sys.stdout.write(freeze(installed()))
    elif args.command == "requirements":
        sys.stdout.write(requirements(args.pyproject))
    else:
        problems = check(args.pins.read_text(), installed())
        for problem in problems:
            print(f"tf_pins: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
