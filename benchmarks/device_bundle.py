"""Everything ``host_ceiling.py`` needs on the lent GPU machine, in one folder to carry.

That machine has Python 3.12, numpy, onnxruntime, psutil and httpx, but neither TensorFlow
nor the server's own packages, and no network.  This folder holds:

* ``whl/``: the server's runtime wheels for CPython 3.12 on manylinux x86-64 (``SERVER``,
  kept in step with pyproject by ``tests/test_benchmarks.py``), uvloop and httptools
  included: without them uvicorn serves on asyncio's slower loop;
* ``model/``: the near-free model, ``cifar_resnet_20`` at input 129, exported to ONNX here;
* ``before/``: the app as it was at ``--before`` (a commit), for a before/after run.

Then one call of the device tool, with ``carry: [".devbench"]``, runs it (the stand-in
model on one thread per process, as a GPU's runtime would take: ``--model-threads``)::

    python benchmarks/device_bundle.py --before f74e1fa
    # device command (printed at the end):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .devbench/whl/*.whl \\
      && PYTHONPATH=/tmp/site python3 benchmarks/host_ceiling.py --model .devbench/model ...
"""

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import host_ceiling  # noqa: E402

# The server's runtime packages on the device (TensorFlow, tf-slim, OpenVINO and tqdm are not
# needed to serve an ONNX export; numpy and onnxruntime are there already).
SERVER = [
    "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "h11", "pydantic", "pydantic-core",
    "pydantic-settings", "python-dotenv", "python-multipart", "annotated-types",
    "annotated-doc", "typing-inspection", "typing-extensions", "opentelemetry-api",
    "importlib-metadata", "zipp", "anyio", "idna", "sniffio", "pillow", "prometheus-client",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".devbench")
    parser.add_argument("--before", help="a commit whose app/model/client go to before/")
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args()
    wheels = args.out / "whl"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", args.python_version,
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                    "--dest", str(wheels), *SERVER], check=True)
    host_ceiling.export_near_free(args.out / "model")
    sources = ["--src"]
    if args.before:
        before = args.out / "before"
        shutil.rmtree(before, ignore_errors=True)
        before.mkdir()
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "archive", args.before, "app", "model", "client"],
                           cwd=REPO, stdout=archive, check=True)
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(before, filter="data")
        sources += [str(before.relative_to(REPO)) if before.is_relative_to(REPO)
                    else str(before), "."]
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20
    print(f"{args.out}: {size:.1f} MiB (the device tool carries 64 MiB at most)")
    folder = args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out
    print(f'device command, with carry ["{folder}"]:')
    print(f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
          f"{folder}/whl/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/host_ceiling.py "
          f"--model {folder}/model {' '.join(sources) if args.before else ''} --workers 1 2 4 8 "
          f"--concurrency 32 96 --client-procs 4 --seconds 5 --warmup-s 1 --model-threads 1 "
          f"--json $OUT/x.json")


if __name__ == "__main__":
    main()
