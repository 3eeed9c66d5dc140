"""Restoring checkpoints into the segmentation graph, whatever their naming.

Three layouts are understood, told apart by the variable names they hold:

* DeepLab and atrous's own checkpoints: ``resnet_v1_101/...`` for the backbone and
  ``logits/semantic/{weights,biases}`` (plus ``aspp0``... for the ASPP head), the
  names the graph itself uses;
* slim classification checkpoints: the head is ``resnet_v1_101/logits/...``.  When its
  width is the ImageNet class count (the official tarballs), only the backbone is
  restored and the head keeps its fresh initialisation, for fine-tuning;
* either format on disk: V1 single files (``resnet_v1_101.ckpt``) and V2 index/data.

Batch-norm moving statistics are model variables and are restored like weights.
Anything that does not fit becomes one ``CheckpointMismatchError`` listing the
missing, unexpected and mis-shaped variables.
"""

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Any

import tensorflow as tf

from model.config import ModelConfig
from model.nets.backbones import BACKBONES, get_backbone
from model.nets.network import LOGITS_BRANCH, LOGITS_SCOPE, head_scopes

log = logging.getLogger(__name__)

# Bookkeeping a training run leaves in a checkpoint that no inference graph has.
_IGNORED = re.compile(
    r"(^global_step$)|(/(Momentum|Adam(_1)?|RMSProp(_1)?|ExponentialMovingAverage)$)"
    r"|(^beta[12]_power(_\d+)?$)"
)
_LISTED = 8
# A training run directory (``atrous train --out RUN``) records its network here, so that
# a RUN is a complete checkpoint: ``export``/``eval --checkpoint RUN`` need no model flags.
RUN_CONFIG_FILE = "atrous_run.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or read."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose variables do not fit the configured network."""

    def __init__(self, checkpoint: str, config: ModelConfig, missing: list[str],
                 unexpected: list[str], misshaped: list[str]) -> None:
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [f"checkpoint {checkpoint} does not match {config.backbone} "
                 f"(head={config.head}, num_classes={config.num_classes}):"]
        others = sorted({name.split("/")[0] for name in unexpected} & set(BACKBONES)
                        - {config.backbone})
        if others:
            lines.append(f"  it holds a {', '.join(others)} backbone; "
                         f"pass --backbone {others[0]} to use it")
        for title, names in (("missing from the checkpoint", missing),
                             ("unexpected in the checkpoint", unexpected),
                             ("wrong shape", misshaped)):
            if names:
                shown = "\n    ".join(names[:_LISTED])
                more = f"\n    ... and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
                lines.append(f"  {len(names)} {title}:\n    {shown}{more}")
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What a restore did: the checkpoint, its layout, and whether the head was trained."""

    checkpoint: str
    layout: str  # "deeplab" or "slim"
    restored: int
    head_restored: bool

    @property
    def trained(self) -> bool:
        return self.head_restored


def checkpoints_newest_first(directory: str | Path) -> list[str]:
    """The checkpoints TensorFlow's ``checkpoint`` pointer lists in ``directory``, newest
    first, keeping only those whose index reads and whose data files are all there (a
    process killed mid-save, or a full disk, can leave a torn one: it is skipped)."""
    state = tf.train.get_checkpoint_state(str(directory))
    if state is None:
        return []
    listed = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path and state.model_checkpoint_path not in listed:
        listed.append(state.model_checkpoint_path)
    found = []
    for name in reversed(listed):
        prefix = name if Path(name).is_absolute() else str(Path(directory) / name)
        if _looks_complete(prefix):
            found.append(prefix)
        else:
            log.warning("skipping the incomplete checkpoint %s", prefix)
    return found


def _looks_complete(prefix: str) -> bool:
    """The index parses and lists variables, and every data shard it names exists."""
    try:
        if not tf.train.load_checkpoint(prefix).get_variable_to_shape_map():
            return False
    except (tf.errors.OpError, ValueError):
        return False
    # Only whole shards: a save killed midway leaves "<shard>.tempstate<digits>" beside them.
    shards = [(path, int(match[1])) for path in Path(prefix).parent.glob(
                  Path(prefix).name + ".data-*-of-*")
              if (match := _SHARD.search(path.name))]
    if not shards:
        return False
    total = shards[0][1]
    return len(shards) == total and all(path.stat().st_size > 0 for path, _ in shards)


_SHARD = re.compile(r"\.data-\d+-of-(\d+)$")


def resolve_checkpoint(path: str | Path) -> str:
    """Turns a directory, a V2 prefix, an ``.index`` file or a V1 file into a readable path."""
    path = Path(path).expanduser()
    if path.is_dir():
        complete = checkpoints_newest_first(path)
        if complete:
            return complete[0]
        candidates = sorted(path.glob("*.ckpt")) + sorted(
            p.with_suffix("") for p in path.glob("*.index"))
        if len(candidates) != 1:
            raise CheckpointError(f"{path} holds {len(candidates)} checkpoints; name one of them")
        return str(candidates[0])
    if path.suffix == ".index" or re.fullmatch(r"\.data-\d+-of-\d+", path.suffix):
        path = path.with_suffix("")
    if not (path.exists() or path.with_name(path.name + ".index").exists()):
        raise CheckpointError(f"checkpoint {path} not found")
    return str(path)


def run_config(path: str | Path) -> ModelConfig | None:
    """The ``ModelConfig`` a training run directory recorded; None for anything else."""
    path = Path(path).expanduser()
    record = path / RUN_CONFIG_FILE if path.is_dir() else path.parent / RUN_CONFIG_FILE
    if not record.is_file():
        return None
    try:
        stored = json.loads(record.read_text())["model"]
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in stored.items() if k in known})
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{record} is not a valid run record: {e}") from None


def read_variable_shapes(checkpoint: str) -> dict[str, list[int]]:
    """Variable names and shapes stored in a checkpoint (V1 or V2)."""
    try:
        reader = tf.train.load_checkpoint(checkpoint)
    except Exception as e:  # TF raises several types for unreadable files.
        raise CheckpointError(f"cannot read checkpoint {checkpoint}: "
                              f"{str(e).splitlines()[0]}") from None
    return {name: list(shape) for name, shape in reader.get_variable_to_shape_map().items()}


def _slim_head_name(config: ModelConfig, name: str) -> str:
    """``logits/semantic/weights`` -> ``resnet_v1_101/logits/weights``."""
    return name.replace(f"{LOGITS_SCOPE}/{LOGITS_BRANCH}/", f"{config.backbone}/{LOGITS_SCOPE}/", 1)


def plan_restore(config: ModelConfig, model_shapes: dict[str, list[int]],
                 checkpoint_shapes: dict[str, list[int]],
                 checkpoint: str = "checkpoint") -> tuple[dict[str, str], str, bool]:
    """Matches graph variables to checkpoint variables.

    Args:
        config: the network's configuration.
        model_shapes: graph variable name (no ``:0``) -> shape.
        checkpoint_shapes: checkpoint variable name -> shape.
        checkpoint: path, for messages.

    Returns:
        (graph name -> checkpoint name, layout, head restored).

    Raises:
        CheckpointMismatchError: anything missing, unexpected or mis-shaped.
    """
    heads = head_scopes(config)
    is_head = [name for name in model_shapes if name.split("/")[0] in heads]
    backbone = [name for name in model_shapes if name not in is_head]
    slim_layout = any(_slim_head_name(config, n) in checkpoint_shapes for n in is_head) and not any(
        n in checkpoint_shapes for n in is_head)
    layout = "slim" if slim_layout else "deeplab"

    def ckpt_name(name: str) -> str:
        return _slim_head_name(config, name) if slim_layout and name in is_head else name

    head_in_ckpt = [n for n in is_head if ckpt_name(n) in checkpoint_shapes]
    imagenet_classes = get_backbone(config.backbone).imagenet_classes
    imagenet_head = slim_layout and all(
        checkpoint_shapes[ckpt_name(n)][-1] == imagenet_classes for n in head_in_ckpt
    ) and imagenet_classes != config.num_classes
    restore_head = bool(head_in_ckpt) and not imagenet_head
    if not restore_head and head_in_ckpt:
        log.info("%s is an ImageNet classifier: restoring the backbone only", checkpoint)

    wanted = backbone + (is_head if restore_head else [])
    mapping = {name: ckpt_name(name) for name in wanted}
    missing = sorted(c for c in mapping.values() if c not in checkpoint_shapes)
    misshaped = sorted(
        f"{c}: checkpoint {checkpoint_shapes[c]}, model {model_shapes[m]}"
        for m, c in mapping.items()
        if c in checkpoint_shapes and checkpoint_shapes[c] != model_shapes[m]
    )
    skipped = {ckpt_name(n) for n in is_head} if imagenet_head else set()
    used = set(mapping.values()) | skipped
    unexpected = sorted(n for n in checkpoint_shapes if n not in used and not _IGNORED.search(n))
    if missing or misshaped or unexpected:
        raise CheckpointMismatchError(checkpoint, config, missing, unexpected, misshaped)
    return mapping, layout, restore_head


def restore(session: Any, checkpoint: str | Path, config: ModelConfig) -> RestoreReport:
    """Restores ``checkpoint`` into the graph of ``session`` (variables already initialised).

    Head variables the checkpoint lacks keep their initial values; the report says so.
    """
    path = resolve_checkpoint(checkpoint)
    variables = {v.op.name: v for v in session.graph.get_collection(
        tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
    model_shapes = {name: v.shape.as_list() for name, v in variables.items()}
    mapping, layout, head_restored = plan_restore(
        config, model_shapes, read_variable_shapes(path), path)
    saver = tf.compat.v1.train.Saver({c: variables[m] for m, c in mapping.items()})
    saver.restore(session, path)
    log.info("restored %d variables from %s (%s layout, head %s)", len(mapping), path, layout,
             "restored" if head_restored else "initialised")
    return RestoreReport(path, layout, len(mapping), head_restored)
