"""The loop: a step lowers the loss, resume continues, divergence keeps the last good
checkpoint, and a RUN is a checkpoint that export reads under the serving graph's names."""

import dataclasses
import json
import logging
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from app.cli.main import main
from model import checkpoints
from model.inference.contract import ModelMetadata
from model.nets import network
from model.train import run
from model.train.trainer import Trainer, TrainingDivergedError
from tests.train.training_factory import TINY, TINY_BACKBONE, tiny_train_config


def fixed_batch(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (2, 65, 65, 3)).astype(np.float32)
    labels = np.zeros((2, 65, 65, 1), np.uint8)
    labels[:, 20:50, 10:40] = 15
    images[:, 20:50, 10:40] = (200, 30, 30)
    labels[:, :3] = 255
    return tf.constant(images), tf.constant(labels)


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory):
    """One traced trainer for the step and divergence tests (tracing is the slow part)."""
    return Trainer(TINY, tiny_train_config(learning_rate=0.01),
                   tmp_path_factory.mktemp("runs") / "tiny", backbone=TINY_BACKBONE)


def test_one_step_lowers_the_loss_on_a_fixed_batch(tiny_trainer):
    images, labels = fixed_batch()
    before = tiny_trainer.step(images, labels, 0)["loss"]
    after = tiny_trainer.step(images, labels, 1)["loss"]
    assert after < before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_trainer, synthetic_voc):
    tiny_trainer.train_config = dataclasses.replace(
        tiny_trainer.train_config, steps=50, save_every=1, learning_rate=1e12)
    with pytest.raises(TrainingDivergedError, match="last good checkpoint is .*model.ckpt-"):
        tiny_trainer.train(synthetic_voc, progress=False)
    reader = tf.train.load_checkpoint(run.latest_checkpoint(tiny_trainer.run))
    for name in reader.get_variable_to_shape_map():
        assert np.isfinite(reader.get_tensor(name)).all(), name


def test_resume_continues_the_step_count(tmp_path, synthetic_voc):
    out = tmp_path / "run"

    def sigterm_after_the_first_step() -> float:
        os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes the step, saves, stops
        return 0.0

    first = Trainer(TINY, tiny_train_config(steps=5, save_every=100, eval_every=1), out,
                    backbone=TINY_BACKBONE).train(synthetic_voc, progress=False,
                                                  evaluate=sigterm_after_the_first_step)
    assert (first.stopped, first.step) == ("signal", 1)
    assert first.checkpoint.endswith("model.ckpt-1")  # saved on the signal, not by schedule
    resumed = Trainer(TINY, tiny_train_config(steps=2, save_every=1, eval_every=1), out,
                      backbone=TINY_BACKBONE)
    with pytest.raises(run.RunError, match="pass --resume"):
        resumed.train(synthetic_voc, progress=False)
    result = resumed.train(synthetic_voc, resume=True, progress=False, evaluate=lambda: 0.5)
    assert result.step == 2 and run.step_of(result.checkpoint) == 2
    assert [h["step"] for h in run.read_history(out)] == [1, 2]
    # the momentum slots travelled: the resumed step started from non-zero accumulators
    reader = tf.train.load_checkpoint(first.checkpoint)
    slot = next(n for n in reader.get_variable_to_shape_map() if n.endswith("/Momentum"))
    assert np.abs(reader.get_tensor(slot)).sum() > 0
    assert (out / run.CURVES_FILE).is_file() and list((out / run.SUMMARY_DIR).iterdir())


def test_run_checkpoint_names_are_the_serving_graph_names(trained_run, tmp_path):
    reader = tf.train.load_checkpoint(run.latest_checkpoint(trained_run))
    stored = {n for n in reader.get_variable_to_shape_map()
              if not n.endswith("/Momentum") and n != run.GLOBAL_STEP}
    with tf.Graph().as_default():
        network.predict_labels(tf.zeros([1, 65, 65, 3], tf.uint8), tf.constant([[65, 65]]),
                               TINY)
        graph = {v.op.name for v in tf.compat.v1.global_variables()}
    assert stored == graph
    assert checkpoints.run_config(trained_run) == TINY
    record = json.loads((trained_run / checkpoints.RUN_CONFIG_FILE).read_text())
    assert record["training"]["steps"] == 30
    # `atrous export --checkpoint RUN` needs no network flags; contradicting ones stop it.
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(tmp_path / "x"),
                 "--backbone", "resnet_v1_50"]) == 2
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(tmp_path / "x")]) == 0
    metadata = ModelMetadata.read(tmp_path / "x")
    assert metadata.trained and metadata.weights.endswith("model.ckpt-30")
    assert (metadata.backbone, metadata.input_size) == (TINY.backbone, TINY.input_size)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_lower_the_loss_with_float32_weights(tmp_path, precision):
    trainer = Trainer(dataclasses.replace(TINY, precision=precision),
                      tiny_train_config(learning_rate=0.01), tmp_path / precision,
                      backbone=TINY_BACKBONE)
    assert trainer.loss_scale == (1024.0 if precision == "fp16" else 1.0)
    images, labels = fixed_batch()
    before = trainer.step(images, labels, 0)["loss"]
    after = trainer.step(images, labels, 1)["loss"]
    assert np.isfinite(before) and after < before
    # The checkpoint holds float32 variables under the serving names: it exports as is.
    assert {v.dtype for v in trainer.checkpoint_variables.values()} <= {tf.float32, tf.int64}


def test_resume_skips_a_torn_checkpoint_and_trims_the_history_after_it(tmp_path, synthetic_voc):
    """A kill can tear the newest checkpoint's data and the history's last line: the resume
    restores the checkpoint before and logs every step once."""
    out = tmp_path / "run"
    Trainer(TINY, tiny_train_config(steps=4, save_every=2), out,
            backbone=TINY_BACKBONE).train(synthetic_voc, progress=False)
    assert run.step_of(run.latest_checkpoint(out)) == 4
    data = next(out.glob("model.ckpt-4.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with (out / run.HISTORY_FILE).open("a") as f:
        f.write('{"step": 5, "lo')
    result = Trainer(TINY, tiny_train_config(steps=5, save_every=5), out,
                     backbone=TINY_BACKBONE).train(synthetic_voc, resume=True, progress=False)
    assert result.step == 5 and run.step_of(result.checkpoint) == 5
    assert [h["step"] for h in run.read_history(out)] == [1, 2, 3, 4, 5]


def test_the_history_drops_a_torn_last_line_quietly_and_names_a_corrupt_one(tmp_path, caplog):
    good = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.2}]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]), json.dumps(good[2]),
             '{"step": 4, "lo']  # killed while writing step 4
    (tmp_path / run.HISTORY_FILE).write_text("\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="model.train.run"):
        assert run.read_history(tmp_path) == good
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / run.HISTORY_FILE}:2 is not a JSON entry; skipped"]
    # A whole last line that is not JSON is not a torn write: it is named too.
    (tmp_path / run.HISTORY_FILE).write_text("\n".join(lines) + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model.train.run"):
        assert run.read_history(tmp_path) == good
    assert [r.getMessage().rpartition(":")[2] for r in caplog.records] == [
        "2 is not a JSON entry; skipped", "5 is not a JSON entry; skipped"]
