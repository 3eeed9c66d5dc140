"""The training loop: DeepLab's recipe on a ``tf.distribute`` strategy, saved into RUN.

One synchronous step per global batch: every replica takes its slice of the batch, the
loss is the cross-entropy summed over the replica's counted pixels divided by the
*global* count, plus the L2 weight decay shared out between replicas, so any number
of replicas gives one device's loss and gradients.  ``MomentumOptimizer`` (TF1's, as
DeepLab) sums the replicas' gradients.

Checkpoints land every ``save_every`` steps, at the end and on SIGINT/SIGTERM; a
non-finite loss stops the run before anything is saved, so the last checkpoint on disk
is the last good one.
"""

import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from model import signal_stack
from model.config import ModelConfig
from model.nets.backbones import Backbone
from model.train import data, objective, run
from model.train.augment import AugmentConfig, training_batches
from model.train.module import SegmentationModule

log = logging.getLogger(__name__)

#: fp16 training multiplies the loss (and divides the gradients) by this, so that small
#: gradients do not flush to zero in half precision; a step that overflows is caught by the
#: non-finite check like any divergence.  bf16 has fp32's range and needs none.
FP16_LOSS_SCALE = 1024.0



class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (the network itself is the ``ModelConfig``).

    Attributes:
        steps: total steps of the run (a resumed run continues to this count).
        batch_size: global batch, split evenly across replicas.
        augment: crop, scales, flip.
        learning_rate, power: the poly schedule (DeepLab: 0.007, 0.9).
        momentum: DeepLab's 0.9.
        fine_tune_batch_norm: train batch norm (batch statistics, moving averages
            updated); False freezes it at the checkpoint's statistics.
        save_every: steps between checkpoints.
        log_every: steps between history lines and TensorBoard scalars.
        image_every: steps between sample image/label/prediction summaries.
        eval_every: steps between mIoU measurements on the val split (0 = never).
        seed: initialisation, shuffling and augmentation.
        keep_checkpoints: checkpoints kept in RUN.
    """

    steps: int = 30000
    batch_size: int = 8
    augment: AugmentConfig = AugmentConfig()
    learning_rate: float = objective.BASE_LEARNING_RATE
    power: float = objective.POLY_POWER
    momentum: float = objective.MOMENTUM
    fine_tune_batch_norm: bool = True
    save_every: int = 1000
    log_every: int = 10
    image_every: int = 100
    eval_every: int = 0
    seed: int = 0
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1 or self.log_every < 1:
            raise ValueError("steps, batch_size, save_every and log_every must be >= 1")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run: Path
    step: int
    checkpoint: str | None
    loss: float
    stopped: str  # "finished", "signal"


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set an event the loop checks after each step (then it saves)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # The handler runs on the alternate signal stack, which an OpenVINO Core used earlier
    # in this process may have left pointing at freed memory (model.signal_stack).
    signal_stack.install_own_stack()

    def handler(signum: int, frame: Any) -> None:
        log.warning("received %s: saving a checkpoint after this step",
                    signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _is_chief(strategy: Any) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return bool(task_type == "chief" or (task_type == "worker" and task_id == 0
                                         and "chief" not in resolver.cluster_spec().jobs))


class Trainer:
    """Builds the model, optimizer and step on a strategy; runs and checkpoints them.

    Args:
        config: the network.
        train_config: the recipe.
        run_dir: where checkpoints, summaries and the record go.
        strategy: a ``tf.distribute`` strategy; None: the default (one device).
        backbone: overrides the registry record (tests use tiny block tables).
    """

    def __init__(self, config: ModelConfig, train_config: TrainConfig, run_dir: str | Path,
                 strategy: Any = None, backbone: Backbone | None = None) -> None:
        self.config = config
        self.train_config = train_config
        self.run = Path(run_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        if train_config.batch_size % self.replicas:
            raise ValueError(f"batch_size {train_config.batch_size} must be a multiple of the "
                             f"{self.replicas} replicas")
        self.chief = _is_chief(self.strategy)
        # Mixed precision: variables, the loss and the updates stay float32, the network
        # computes in config.precision; fp16 gradients underflow without loss scaling.
        self.loss_scale = FP16_LOSS_SCALE if config.precision == "fp16" else 1.0
        with self.strategy.scope():
            tf.random.set_seed(train_config.seed)
            self.module = SegmentationModule(config, backbone=backbone)
            self.module.build()
            self.learning_rate = tf.Variable(train_config.learning_rate, trainable=False,
                                             dtype=tf.float32, name="learning_rate")
            self.global_step = tf.Variable(0, trainable=False, dtype=tf.int64,
                                           name=run.GLOBAL_STEP)
            self.optimizer = tf.compat.v1.train.MomentumOptimizer(
                lambda: self.learning_rate, train_config.momentum)
        self.variables = self.module.named_variables()
        self.trainable = self.module.named_trainable_variables()
        self._create_slots()
        self.checkpoint_variables = dict(self.variables)
        for name, variable in self.trainable.items():
            self.checkpoint_variables[f"{name}/{run.MOMENTUM_SLOT}"] = self.optimizer.get_slot(
                variable, "momentum")
        self.checkpoint_variables[run.GLOBAL_STEP] = self.global_step
        self._step_fn = self._make_step()
        self._predict_fn = tf.function(self._predict)
        self._finite_fn = tf.function(self._all_finite)

    # -- building -----------------------------------------------------------------------

    def _create_slots(self) -> None:
        """Creates the momentum slots with a zero-gradient update (moves nothing)."""
        variables = list(self.trainable.values())

        def replica() -> None:
            self.optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])

        self.strategy.run(replica)  # eagerly: tracing it would cost as much as the step

    def _replica_loss(self, images: Any, labels: Any) -> dict[str, Any]:
        tc = self.train_config
        context = tf.distribute.get_replica_context()
        variables = list(self.trainable.values())
        with tf.GradientTape() as tape:
            logits = self.module.logits(images, is_training=tc.fine_tune_batch_norm)
            logits = objective.upsample_logits(logits, tc.augment.crop_size)
            ce_sum, count = objective.cross_entropy_sum(logits, labels, self.config.num_classes)
            global_count = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
            cross_entropy = ce_sum / tf.maximum(global_count, 1.0)
            decay = objective.weight_decay_loss(variables, self.config.weight_decay)
            loss = cross_entropy + decay / self.replicas
            scaled_loss = loss * self.loss_scale
        gradients = tape.gradient(scaled_loss, variables)
        if self.loss_scale != 1.0:
            gradients = [g / self.loss_scale for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        correct, counted = objective.pixel_counts(logits, labels)
        return {"loss": loss, "cross_entropy": cross_entropy, "correct": correct,
                "counted": counted}

    def _make_step(self) -> Callable[[Any, Any], dict[str, Any]]:
        per_replica = self.train_config.batch_size // self.replicas

        @tf.function
        def step(images: Any, labels: Any) -> dict[str, Any]:
            def slices(ctx: Any) -> tuple[Any, Any]:
                start = ctx.replica_id_in_sync_group * per_replica
                return images[start:start + per_replica], labels[start:start + per_replica]

            inputs = self.strategy.experimental_distribute_values_from_function(slices)
            outputs = self.strategy.run(self._replica_loss, args=inputs)
            return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                    for k, v in outputs.items()}

        return step

    def _predict(self, images: Any) -> Any:
        """Inference-mode predictions at crop resolution: uint8 [N, C, C]."""
        logits = self.module.logits(images, is_training=False)
        logits = objective.upsample_logits(logits, self.train_config.augment.crop_size)
        return tf.cast(tf.argmax(logits, -1), tf.uint8)

    # -- state --------------------------------------------------------------------------

    def initialise(self, *, init: str | None = None, resume: bool = False) -> int:
        """Writes or checks the RUN record; restores; returns the step to start from."""
        latest = run.latest_checkpoint(self.run)
        if resume:
            recorded = run.read_config(self.run)
            if recorded != self.config:
                raise run.RunError(f"{self.run} was trained with {recorded}; resume with the "
                                   f"same network (got {self.config})")
            if latest is None:
                raise run.RunError(f"{self.run} holds no checkpoint to resume from")
            restored = self._restore_newest_whole()
            step = int(self.global_step.numpy())
            dropped = run.trim_history(self.run, step) if self.chief else 0
            log.info("resumed %s at step %d%s", restored, step,
                     f" ({dropped} history lines after it dropped)" if dropped else "")
            return step
        if latest is not None:
            raise run.RunError(f"{self.run} already holds checkpoints; pass --resume to "
                               "continue it or choose another --out")
        if init is not None:
            objective.init_from_checkpoint(self.variables, init, self.config)
        if self.chief:
            run.trim_history(self.run, 0)  # a run killed before its first checkpoint
            run.write_record(self.run, self.config, dict(
                dataclasses.asdict(self.train_config), init=init, replicas=self.replicas))
        return 0

    def _restore_newest_whole(self) -> str:
        """Restores the newest checkpoint that reads in full (an older one if the newest is
        torn: a resume trusts only a complete checkpoint); returns its path."""
        for checkpoint in run.complete_checkpoints(self.run):
            try:
                run.restore_all(checkpoint, self.checkpoint_variables)
            except run.RunError:
                raise  # another network's checkpoint: not a torn file
            except Exception as e:  # noqa: BLE001 - a torn file: OpError, IndexError, ...
                log.warning("checkpoint %s does not read whole (%s): trying the one before",
                            checkpoint, str(e).splitlines()[0] if str(e) else type(e).__name__)
                continue
            return checkpoint
        raise run.RunError(f"{self.run} holds no complete checkpoint to resume from")

    def save(self, writer: run.CheckpointWriter, step: int, last: str | None) -> str | None:
        """Checkpoints ``step`` unless a variable went non-finite (then raises, keeping ``last``).

        A finite loss does not prove finite weights: batch-norm moving variances can
        overflow a step before the loss does.
        """
        if not bool(self._finite_fn()):
            bad = sorted(name for name, v in self.variables.items()
                         if not np.isfinite(v.numpy()).all())
            raise TrainingDivergedError(
                f"variables became non-finite at step {step} ({', '.join(bad[:3])}"
                f"{' ...' if len(bad) > 3 else ''}); stopped without saving; the last good "
                f"checkpoint is {last or 'none (no checkpoint was written yet)'}. "
                "Lower --learning-rate or check the data.")
        self.global_step.assign(step)
        if not self.chief:
            return None
        return writer.save(step)

    def _all_finite(self) -> Any:
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v))
                              for v in self.variables.values()])

    # -- the loop -----------------------------------------------------------------------

    def batches(self, data_path: str | Path, split: str, start_step: int) -> Any:
        """The global batches; a resumed run reseeds the stream with its start step."""
        tc = self.train_config
        examples = data.dataset(data_path, split, self.config.num_classes)
        return training_batches(examples, tc.augment, tc.batch_size,
                                seed=tc.seed + 1_000_003 * start_step)

    def step(self, images: Any, labels: Any, step: int) -> dict[str, float]:
        """One synchronous training step at ``step`` (sets the poly learning rate)."""
        tc = self.train_config
        lr = objective.poly_learning_rate(step, tc.steps, tc.learning_rate, tc.power)
        self.learning_rate.assign(lr)
        out = {k: float(v) for k, v in self._step_fn(images, labels).items()}
        out["lr"] = lr
        out["pixel_accuracy"] = out["correct"] / max(out["counted"], 1.0)
        return out

    def train(self, data_path: str | Path, *, split: str = "train", init: str | None = None,
              resume: bool = False, progress: bool = True,
              evaluate: Callable[[], float] | None = None) -> TrainResult:
        """Runs to ``train_config.steps``; returns where it stopped.

        Args:
            data_path: a VOC directory or DeepLab TFRecords.
            split: the training split.
            init: checkpoint to initialise from (ImageNet: backbone only).
            resume: continue RUN from its latest checkpoint.
            progress: show a tqdm bar on stderr.
            evaluate: returns the val mIoU; called every ``eval_every`` steps.

        Raises:
            TrainingDivergedError: a non-finite loss.
        """
        from tqdm import tqdm

        tc = self.train_config
        start = self.initialise(init=init, resume=resume)
        writer = run.CheckpointWriter(self.run, self.checkpoint_variables, tc.keep_checkpoints)
        summaries = _Summaries(self.run / run.SUMMARY_DIR) if self.chief else None
        last_checkpoint = run.latest_checkpoint(self.run)
        if start >= tc.steps:
            log.info("%s is already at step %d of %d", self.run, start, tc.steps)
            return TrainResult(self.run, start, last_checkpoint, math.nan, "finished")
        iterator = iter(self.batches(data_path, split, start))
        bar = tqdm(total=tc.steps, initial=start, disable=not progress or not self.chief,
                   unit="step", dynamic_ncols=True)
        step, loss, stopped = start, math.nan, "finished"
        window_start, window_images = time.monotonic(), 0
        try:
            with _stop_on_signals() as stop:
                while step < tc.steps:
                    images, labels = next(iterator)
                    out = self.step(images, labels, step)
                    loss = out["loss"]
                    if not math.isfinite(loss):
                        raise TrainingDivergedError(
                            f"loss is {loss} at step {step + 1} (learning rate {out['lr']:.3g});"
                            f" stopped without saving; the last good checkpoint is "
                            f"{last_checkpoint or 'none (no checkpoint was written yet)'}. "
                            "Lower --learning-rate or check the data.")
                    step += 1
                    window_images += tc.batch_size
                    elapsed = time.monotonic() - window_start
                    speed = window_images / elapsed if elapsed > 0 else 0.0
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{out['lr']:.2e}",
                                    img_s=f"{speed:.1f}", refresh=False)
                    entry: dict[str, Any] = {}
                    if step % tc.log_every == 0 or step == tc.steps:
                        entry = {"step": step, "loss": loss, "cross_entropy": out["cross_entropy"],
                                 "lr": out["lr"], "pixel_accuracy": out["pixel_accuracy"],
                                 "images_per_s": speed, "time": time.time()}
                        window_start, window_images = time.monotonic(), 0
                    if tc.eval_every and evaluate is not None and (
                            step % tc.eval_every == 0 or step == tc.steps):
                        entry = entry or {"step": step, "loss": loss, "time": time.time()}
                        entry["miou"] = evaluate()
                        bar.set_postfix(loss=f"{loss:.4f}", miou=f"{entry['miou']:.3f}",
                                        refresh=False)
                        window_start, window_images = time.monotonic(), 0
                    if entry and self.chief:
                        run.append_history(self.run, entry)
                        assert summaries is not None
                        summaries.scalars(step, entry)
                    if summaries is not None and step % tc.image_every == 0:
                        summaries.sample(step, images[:1].numpy(), labels[:1].numpy(),
                                         self._predict_fn(images[:1]).numpy(),
                                         self.config.num_classes)
                    if step % tc.save_every == 0 or step == tc.steps:
                        last_checkpoint = self.save(writer, step, last_checkpoint) or \
                            last_checkpoint
                    if stop.is_set():
                        if step % tc.save_every:
                            last_checkpoint = self.save(writer, step, last_checkpoint) or \
                                last_checkpoint
                        stopped = "signal"
                        break
        finally:
            bar.close()
            if summaries is not None:
                summaries.close()
        if self.chief:
            from model.train.curves import draw_curves

            draw_curves(run.read_history(self.run), self.run / run.CURVES_FILE)
        return TrainResult(self.run, step, last_checkpoint, loss, stopped)


class _Summaries:
    """TensorBoard event files written as raw ``Summary`` protos (no tensorboard package)."""

    def __init__(self, directory: Path) -> None:
        self._writer = tf.summary.create_file_writer(str(directory))

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        from tensorflow.core.framework import summary_pb2

        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=f"train/{k}", simple_value=float(v))
            for k, v in values.items() if k not in ("step", "time")])
        self._write(summary, step)

    def sample(self, step: int, image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
               num_classes: int) -> None:
        import io

        from PIL import Image
        from tensorflow.core.framework import summary_pb2

        from model.inference.labels import voc_colormap

        colours = voc_colormap(256)
        pictures = {
            "sample/image": np.clip(image[0], 0, 255).astype(np.uint8),
            "sample/label": colours[label[0, ..., 0]],
            "sample/prediction": colours[prediction[0]],
        }
        values = []
        for tag, pixels in pictures.items():
            encoded = io.BytesIO()
            Image.fromarray(pixels).save(encoded, format="PNG")
            values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
                height=pixels.shape[0], width=pixels.shape[1], colorspace=3,
                encoded_image_string=encoded.getvalue())))
        self._write(summary_pb2.Summary(value=values), step)

    def _write(self, summary: Any, step: int) -> None:
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

