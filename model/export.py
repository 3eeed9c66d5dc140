"""SavedModel export: the graph the inference runtimes and the server load without tf-slim.

The exported ``serving_default`` signature is documented in ``model.inference.contract``.  The
graph is built in TF1 graph mode (tf-slim's home), variables are initialised with a
fixed seed, then restored from a checkpoint when one is given.
"""

import dataclasses
import hashlib
import json
import logging
import shutil
import warnings
from pathlib import Path

import tensorflow as tf

from model import atomic, checkpoints
from model.config import ModelConfig
from model.inference.contract import (
    INPUT_IMAGES,
    INPUT_SIZES,
    OUTPUT_LABELS,
    OUTPUT_PROBABILITIES,
    PROBABILITIES_SIGNATURE,
    SIGNATURE_NAME,
    ModelMetadata,
)
from model.inference.labels import class_labels, voc_colormap
from model.nets import network

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"


class UntrainedModelWarning(UserWarning):
    """The exported head (or whole network) was never trained: its masks are noise."""


def export_saved_model(config: ModelConfig, out_dir: str | Path, *,
                       checkpoint: str | Path | None = None, seed: int = 0,
                       overwrite: bool = False) -> ModelMetadata:
    """Builds the inference graph, restores weights and writes a SavedModel.

    Args:
        config: the network configuration, compute precision included.
        out_dir: SavedModel directory to create (written atomically).
        checkpoint: weights to restore; None keeps the seeded random initialisation.
        seed: graph-level seed of the random initialisation.
        overwrite: replace an existing ``out_dir``.

    Returns:
        the metadata written beside the SavedModel.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    size = config.input_size
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        images = tf.compat.v1.placeholder(tf.uint8, [None, size, size, 3], name=INPUT_IMAGES)
        sizes = tf.compat.v1.placeholder(tf.int32, [None, 2], name=INPUT_SIZES)
        logits = network.upsampled_logits(images, sizes, config)
        labels = tf.identity(network.labels_from_logits(logits), name=OUTPUT_LABELS)
        probabilities = tf.identity(network.probabilities_from_logits(logits),
                                    name=OUTPUT_PROBABILITIES)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            if checkpoint is None:
                trained, weights = False, RANDOM_WEIGHTS
                warnings.warn(f"no checkpoint: exporting {config.backbone} with random weights "
                              f"(seed {seed}); its masks are meaningless",
                              UntrainedModelWarning, stacklevel=2)
            else:
                report = checkpoints.restore(session, checkpoint, config)
                trained, weights = report.trained, report.checkpoint
                if not trained:
                    warnings.warn(f"{report.checkpoint} has no segmentation head: the head is "
                                  "randomly initialised", UntrainedModelWarning, stacklevel=2)
            # Built under a temporary name, renamed when whole: a reader (or a server
            # restarted after a kill) sees the whole export or none; a process that loses
            # a race to the same directory discards its copy (FileExistsError).
            with atomic.staging_directory(out_dir, overwrite=overwrite) as staging:
                staging.rmdir()  # the builder insists on creating the directory itself
                builder = tf.compat.v1.saved_model.Builder(str(staging))
                inputs = {INPUT_IMAGES: images, INPUT_SIZES: sizes}
                signatures = {
                    SIGNATURE_NAME: tf.compat.v1.saved_model.predict_signature_def(
                        inputs=inputs, outputs={OUTPUT_LABELS: labels}),
                    PROBABILITIES_SIGNATURE: tf.compat.v1.saved_model.predict_signature_def(
                        inputs=inputs, outputs={OUTPUT_PROBABILITIES: probabilities}),
                }
                builder.add_meta_graph_and_variables(
                    session, [tf.saved_model.SERVING],
                    signature_def_map=signatures, strip_default_attrs=True)
                builder.save()
                metadata = ModelMetadata(
                    backbone=config.backbone, output_stride=config.output_stride,
                    num_classes=config.num_classes, head=config.head,
                    input_size=config.input_size, precision=config.precision,
                    trained=trained, weights=weights,
                    labels=tuple(class_labels(config.num_classes)),
                    colors=tuple((int(r), int(g), int(b))
                                 for r, g, b in voc_colormap(config.num_classes)),
                    tensorflow_version=tf.__version__,
                )
                metadata.write(staging)  # last: its presence marks a complete export
    log.info("exported %s to %s", config.backbone, out_dir)
    return metadata


def cache_key(config: ModelConfig, checkpoint: str | Path | None) -> str:
    """A name that changes whenever the export would: config (precision too), checkpoint
    files, and the signatures written."""
    fingerprint: dict[str, object] = {"config": dataclasses.asdict(config), "tf": tf.__version__,
                                      "signatures": [SIGNATURE_NAME, PROBABILITIES_SIGNATURE]}
    if checkpoint is not None:
        path = Path(checkpoints.resolve_checkpoint(checkpoint))
        files = sorted(p for p in path.parent.glob(path.name + "*") if p.is_file())
        fingerprint["checkpoint"] = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                                     for p in files]
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    return f"{config.backbone}-os{config.output_stride}-{config.precision}-{digest[:16]}"


def cached_export(config: ModelConfig, cache_dir: str | Path, *,
                  checkpoint: str | Path | None = None) -> Path:
    """Exports once per (config, checkpoint) into ``cache_dir`` and reuses it.

    Safe against interruption and concurrency: an export is built in a temporary
    directory and renamed into the cache when complete, so a process killed mid-export
    leaves only a temporary directory (ignored, removed once stale) and the next start
    exports again; two processes exporting at once both build, the first rename wins and
    the other discards its copy and loads the winner's.
    """
    target = Path(cache_dir).expanduser() / cache_key(config, checkpoint)
    atomic.remove_stale_staging(target)
    try:
        ModelMetadata.read(target)
        log.info("using cached SavedModel %s", target)
        return target
    except ValueError:
        if target.exists():
            try:  # another process may have renamed its finished export here just now
                ModelMetadata.read(target)
                return target
            except ValueError:  # an interrupted export of an older version: replace it
                log.warning("ignoring the incomplete export %s: exporting again", target)
                shutil.rmtree(target, ignore_errors=True)
    try:
        export_saved_model(config, target, checkpoint=checkpoint)
    except FileExistsError:
        # Another process sharing the cache finished the same export first: use theirs,
        # never delete a directory it may be loading.
        ModelMetadata.read(target)
    return target
