"""The training run directory (``RUN``): what a run leaves behind and resumes from.

::

    RUN/atrous_run.json          the ModelConfig and the training settings
    RUN/checkpoint               TensorFlow's pointer to the latest checkpoint
    RUN/model.ckpt-<step>.*      name-based V2 checkpoints: the network under its graph
                                 names, ``<name>/Momentum`` slots and ``global_step``
    RUN/history.jsonl            one JSON line per logged step (loss, lr, accuracy, mIoU)
    RUN/train/events.*           TensorBoard summaries
    RUN/curves.png               loss and mIoU curves, drawn at the end

Checkpoints are written with ``tf.compat.v1.train.Saver`` under the serving graph's
variable names, so ``model.checkpoints.restore`` (export, serve) reads RUN directly; its
``_IGNORED`` rule skips the optimizer slots and the step.

A ``kill -9`` can land anywhere: TensorFlow writes a checkpoint's files before it moves the
``checkpoint`` pointer (itself replaced atomically), the record and the curves are written
atomically (``model.atomic``), a resume restores the newest checkpoint that reads whole
(``complete_checkpoints``), and ``trim_history`` drops the history lines logged after it
(and a torn last line), so the step count and the loss curve continue without a repeat.
"""

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import tensorflow as tf

from model.atomic import atomic_write_text
from model.checkpoints import (
    RUN_CONFIG_FILE,
    CheckpointError,
    checkpoints_newest_first,
    run_config,
)
from model.config import ModelConfig

CHECKPOINT_PREFIX = "model.ckpt"
HISTORY_FILE = "history.jsonl"
CURVES_FILE = "curves.png"
SUMMARY_DIR = "train"
GLOBAL_STEP = "global_step"
MOMENTUM_SLOT = "Momentum"

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A RUN directory that cannot be started or resumed as asked."""


def write_record(run: Path, config: ModelConfig, training: dict[str, Any]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    record = {"model": dataclasses.asdict(config), "training": training,
              "tensorflow_version": tf.__version__}
    atomic_write_text(run / RUN_CONFIG_FILE, json.dumps(record, indent=2, default=str) + "\n")


def read_record(run: Path) -> dict[str, Any]:
    path = run / RUN_CONFIG_FILE
    try:
        record: dict[str, Any] = json.loads(path.read_text())
        return record
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{run} is not a training run: cannot read {path}: {e}") from None


def read_config(run: Path) -> ModelConfig:
    try:
        config = run_config(run)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    if config is None:
        raise RunError(f"{run} is not a training run: {RUN_CONFIG_FILE} is missing")
    return config


def latest_checkpoint(run: Path) -> str | None:
    """The newest checkpoint of RUN whose files are all there."""
    complete = complete_checkpoints(run)
    return complete[0] if complete else None


def complete_checkpoints(run: Path) -> list[str]:
    """RUN's checkpoints whose files are all there, newest first."""
    return checkpoints_newest_first(run)


def step_of(checkpoint: str) -> int:
    return int(tf.train.load_checkpoint(checkpoint).get_tensor(GLOBAL_STEP))


class CheckpointWriter:
    """Saves named variables (plain or distributed) under their names, keeping the last few.

    Args:
        run: the RUN directory.
        variables: checkpoint name -> variable; distributed variables are saved from
            their first local copy (all copies are equal after a synchronous step).
        keep: checkpoints kept on disk.
    """

    def __init__(self, run: Path, variables: dict[str, Any], keep: int = 3) -> None:
        self.run = run
        self.variables = variables
        local = {name: _local(v) for name, v in variables.items()}
        self._saver = tf.compat.v1.train.Saver(local, max_to_keep=keep, save_relative_paths=True)
        existing = tf.train.get_checkpoint_state(str(run))
        if existing is not None:  # keep pruning the files of the run being resumed
            self._saver.recover_last_checkpoints(list(existing.all_model_checkpoint_paths))

    def save(self, step: int) -> str:
        path: str = self._saver.save(None, str(self.run / CHECKPOINT_PREFIX), global_step=step,
                                     write_meta_graph=False)
        return path


def _local(variable: Any) -> Any:
    values = getattr(variable, "values", None)
    return values[0] if values else variable


def restore_all(checkpoint: str, variables: dict[str, Any]) -> None:
    """Assigns every named variable from ``checkpoint`` (a resume: all must be present)."""
    reader = tf.train.load_checkpoint(checkpoint)
    stored = reader.get_variable_to_shape_map()
    missing = sorted(name for name in variables if name not in stored)
    if missing:
        raise RunError(f"{checkpoint} lacks {len(missing)} variables of this run, e.g. "
                       f"{', '.join(missing[:4])}")
    for name, variable in variables.items():
        variable.assign(reader.get_tensor(name))


def append_history(run: Path, entry: dict[str, Any]) -> None:
    with (run / HISTORY_FILE).open("a") as f:
        f.write(json.dumps(entry) + "\n")


def read_history(run: Path) -> list[dict[str, Any]]:
    """The logged entries.  A torn last line (the process was killed writing it) is dropped
    quietly; an unreadable line anywhere else is corruption, skipped with a warning naming it."""
    path = run / HISTORY_FILE
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if not (number == len(lines) and not text.endswith("\n")):
                log.warning("%s:%d is not a JSON entry; skipped", path, number)
    return entries


def trim_history(run: Path, step: int) -> int:
    """Keeps the history up to ``step`` (the checkpoint a resume starts from), rewritten
    atomically: entries logged after it are about to be logged again.  Returns how many
    were dropped."""
    path = run / HISTORY_FILE
    if not path.is_file():
        return 0
    entries = read_history(run)
    kept = [entry for entry in entries if int(entry.get("step", 0)) <= step]
    text = path.read_text()
    if len(kept) == len(entries) and (not text or text.endswith("\n")):
        return 0
    atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in kept))
    return len(entries) - len(kept)
