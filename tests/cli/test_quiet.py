"""The command line shows TensorFlow's start-up and deprecation chatter only with ``-v``.

Real ``atrous`` processes, as a user starts them: what is printed before TensorFlow
initialises its logging cannot be seen from inside a test process.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--backbone", "cifar_resnet_20", "--input-size", "65"]

# absl/glog lines ("I0000 00:00:1796.. 19119 port.cc:153] oneDNN ..."), absl's banner,
# TensorFlow's Python logger ("WARNING tensorflow: From ...") and tf-slim's layer.apply warning.
TENSORFLOW_LINE = re.compile(
    r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda|^\w+ tensorflow: |is deprecated",
    re.MULTILINE | re.IGNORECASE)


def atrous(*args: str) -> subprocess.Popen[str]:
    # As a user's shell starts it: no TF_CPP_MIN_LOG_LEVEL of the test run's own.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    return out


def test_help_prints_usage_only() -> None:
    out = finish(atrous("--help"))
    assert out.startswith("usage: atrous")
    assert "--verbose" in out
    assert not TENSORFLOW_LINE.search(out), out


def test_export_is_quiet_by_default_and_verbose_with_v(tmp_path: Path) -> None:
    # Both at once: each spends most of its time importing TensorFlow.
    quiet = atrous("export", *SMALL, "--out", str(tmp_path / "quiet"))
    verbose = atrous("-v", "export", *SMALL, "--out", str(tmp_path / "verbose"))
    quiet_out, verbose_out = finish(quiet), finish(verbose)

    assert "wrote " in quiet_out and "random weights" in quiet_out  # our own lines stay
    assert not TENSORFLOW_LINE.search(quiet_out), quiet_out

    assert "wrote " in verbose_out
    assert "absl::InitializeLog" in verbose_out, verbose_out   # C++, before absl's setup
    assert "WARNING tensorflow: From " in verbose_out            # TensorFlow's deprecations
    assert "is deprecated" in verbose_out


def test_an_import_off_the_main_thread_leaves_the_processs_stderr_alone() -> None:
    """``atrous serve`` imports TensorFlow in its model-loading thread: what the other
    threads log meanwhile (uvicorn's start-up, access lines) must still reach stderr."""
    script = (
        "import os, sys, threading, time\n"
        "from app.cli.quiet import quiet_tensorflow\n"
        "quiet_tensorflow(verbose=False)\n"
        "worker = threading.Thread(target=lambda: __import__('tensorflow'))\n"
        "worker.start()\n"
        "while worker.is_alive():\n"
        "    os.write(2, b'main thread line\\n')\n"
        "    time.sleep(0.05)\n"
        "worker.join()\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Every line written while TensorFlow imported is there (one a 50 ms, the import takes
    # seconds); with file descriptor 2 swapped for the import they were all thrown away.
    assert done.stderr.count("main thread line") >= 5, done.stderr
