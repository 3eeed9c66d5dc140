"""``kill -9`` of ``atrous train`` at random moments, then ``--resume``: training goes on
from the last complete checkpoint, the step count and the loss curve (history.jsonl)
continue with no repeated and no missing step, and the run ends where it would have."""

import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli.main import main
from model.train import run
from tests.conftest import REPO

STEPS, SAVE_EVERY = 24, 3


def _train(out: Path, data: Path, *, resume: bool, log: Path) -> subprocess.Popen:
    network = [] if resume else ["--backbone", "cifar_resnet_20"]
    command = [sys.executable, "-m", "app.cli", "train", "--data", str(data), "--out", str(out),
               "--crop-size", "65", "--steps", str(STEPS), "--batch-size", "2",
               "--save-every", str(SAVE_EVERY), "--log-every", "1", "--image-every", "1000",
               "--learning-rate", "0.02", "--no-progress", *network,
               *(["--resume"] if resume else [])]
    with log.open("ab") as sink:
        return subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def _logged_steps(out: Path) -> int:
    return len(run.read_history(out))


@pytest.mark.parametrize("seed", [7])
def test_kill_9_at_random_points_then_resume_continues(tmp_path, seed):
    data = tmp_path / "voc"
    assert main(["data", "synthetic", str(data), "--train", "4", "--val", "2", "--size", "64",
                 "--seed", "3"]) == 0
    out, log = tmp_path / "run", tmp_path / "train.log"
    rng = random.Random(seed)
    reached = 0
    for attempt in range(2):  # two kills at random steps (and moments inside a step)
        start = max(reached, SAVE_EVERY) + 1
        target = rng.randint(start, min(start + 5, STEPS - 2))
        process = _train(out, data, resume=attempt > 0, log=log)
        deadline = time.monotonic() + 240
        while _logged_steps(out) < target:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        process.kill()
        process.wait()
        reached = max(step for step in (h["step"] for h in run.read_history(out)))
        checkpoint = run.latest_checkpoint(out)
        assert checkpoint is not None and run.step_of(checkpoint) <= reached
    final = _train(out, data, resume=True, log=log)
    assert final.wait(240) == 0, log.read_text()
    text = log.read_text()
    resumed_at = [int(line.rsplit("at step ", 1)[1].split()[0])
                  for line in text.splitlines() if "resumed " in line and "at step" in line]
    assert len(resumed_at) == 2 and all(step % SAVE_EVERY == 0 for step in resumed_at), text
    history = run.read_history(out)
    assert [h["step"] for h in history] == list(range(1, STEPS + 1)), history
    assert all(math.isfinite(h["loss"]) for h in history)
    assert run.step_of(run.latest_checkpoint(out)) == STEPS
    assert (out / run.CURVES_FILE).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no torn temporaries
