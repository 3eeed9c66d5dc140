"""tf.distribute for real on a CPU: MirroredStrategy over two logical devices and
MultiWorkerMirroredStrategy over two local worker processes (TF_CONFIG on loopback) give
one device's losses on the same global batch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.checkpoint_factory import write_checkpoint
from tests.conftest import REPO, free_port
from tests.train.training_factory import TINY, TINY_BACKBONE


@pytest.mark.slow  # two TensorFlow processes tracing three trainings: ~60 s on 2 busy cores
def test_mirrored_and_multi_worker_match_one_device(tmp_path):
    init = write_checkpoint(TINY, tmp_path / "init" / "model.ckpt", backbone=TINY_BACKBONE)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    module = [sys.executable, "-m", "tests.train.distributed_worker"]
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        worker_env = dict(env, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [*module, init, str(tmp_path / f"worker{index}.json")],
            cwd=REPO, env=worker_env, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr[-3000:]
    first, second = (json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2))
    assert first["multi-worker replicas"] == 2 and second["mirrored replicas"] == 2
    single = np.array(first["single"])
    assert single[-1] < single[0]  # the steps trained
    np.testing.assert_allclose(second["mirrored"], single, rtol=1e-4)
    for worker in (first, second):
        np.testing.assert_allclose(worker["multi-worker"], single, rtol=1e-4)
