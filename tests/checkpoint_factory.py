"""Checkpoints that tests make under the official variable names (no downloads here).

``write_checkpoint`` builds the real network, optionally hand-sets its weights, renames
the head to the slim layout when asked, and saves in the V1 (single file, as in the
published slim tarballs) or V2 (index/data) format.
"""

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from model.config import ModelConfig
from model.nets import network
from model.nets.backbones import Backbone, get_backbone

# Hand-set "colour routing" network: the stem copies +RGB and -RGB (after mean
# subtraction) into six channels, every shortcut passes them on, every residual branch
# is zero and batch norm is the identity, so the features are the input colours.
# The head then votes: red -> person (15), green -> aeroplane (1), blue -> car (7),
# anything dark or the mean-pixel padding -> background (0).
ROUTED_CLASSES = {(255, 0, 0): 15, (0, 255, 0): 1, (0, 0, 255): 7, (0, 0, 0): 0}


def tiny(name: str) -> Backbone:
    """``name``'s registry record with 2 units per block and base depths 1-8 (slim's test
    sizes): the official variable names, a fraction of the weights."""
    spec = get_backbone(name)
    return dataclasses.replace(spec, units=(2,) * len(spec.units),
                               base_depths=(1, 2, 4, 8)[: len(spec.units)])


def color_routing_value(name: str, shape: list[int], *, stem_gain: float = 1.0,
                        background_bias: float = 50.0) -> np.ndarray | None:
    """The routed weights; ``stem_gain`` 127.5 suits [-1, 1] inputs (``scale_to_unit``, the
    CIFAR backbones), so that their features match the mean-subtracted ResNets'.  A colour
    logit is ``max(0, value - 127.5)`` there: a ``background_bias`` of half its peak puts
    the class edge half-way between a colour's logits sample and a black one's."""
    value = np.zeros(shape, np.float32)
    leaf = name.rsplit("/", 1)[-1]
    if leaf in ("gamma", "moving_variance"):
        return np.ones(shape, np.float32)
    if leaf in ("beta", "moving_mean"):
        return value
    if name.endswith("conv1/weights") and name.count("/") == 2:  # the stem, resnet_v1_*/conv1
        centre = shape[0] // 2
        for c in range(3):
            value[centre, centre, c, c] = stem_gain
            value[centre, centre, c, 3 + c] = -stem_gain
        return value
    if name.endswith("shortcut/weights"):
        for c in range(6):
            value[0, 0, c, c] = 1.0
        return value
    if name == "logits/semantic/weights":
        for channel, cls in enumerate((15, 1, 7)):
            value[0, 0, channel, cls] = 1.0
        return value
    if name == "logits/semantic/biases":
        value[0] = background_bias  # background wins unless a colour channel is strong
        return value
    if leaf == "weights":
        return value
    return None


def color_routing_values(backbone: str) -> Callable[[str, list[int]], np.ndarray | None]:
    """``color_routing_value`` with the stem gain ``backbone``'s preprocessing needs."""
    if get_backbone(backbone).preprocessing == "mean_subtract":
        return color_routing_value
    return functools.partial(color_routing_value, stem_gain=127.5, background_bias=127.5 / 2)


def write_checkpoint(
    config: ModelConfig,
    path: str | Path,
    *,
    layout: str = "deeplab",
    version: str = "V2",
    values: Callable[[str, list[int]], np.ndarray | None] | None = None,
    head: bool = True,
    imagenet_classes: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
    seed: int = 1,
    backbone: Backbone | None = None,
) -> str:
    """Builds ``config``'s network, sets weights and saves a checkpoint at ``path``.

    Args:
        layout: ``deeplab`` (``logits/semantic/*``) or ``slim`` (``<backbone>/logits/*``).
        version: ``V1`` (one file) or ``V2`` (index + data).
        values: name, shape -> value (None keeps the seeded random initialisation).
        head: save the head variables.
        imagenet_classes: replace the head by a slim ImageNet classifier of that width.
        extra: more variables to save (e.g. ``global_step``).
        backbone: a registry record to build instead of ``config.backbone``'s (tiny tables).

    Returns:
        the checkpoint path to pass to the loader.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        images = tf.compat.v1.placeholder(tf.float32, [1, config.input_size, config.input_size, 3])
        network.segmentation_logits(images, config, is_training=False, backbone=backbone)
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        heads = network.head_scopes(config)
        to_save = {}
        for name, variable in variables.items():
            in_head = name.split("/")[0] in heads
            if in_head and (not head or imagenet_classes):
                continue
            saved_name = name
            if in_head and layout == "slim":
                saved_name = name.replace("logits/semantic/", f"{config.backbone}/logits/")
            to_save[saved_name] = variable
        if imagenet_classes:
            depth = variables["logits/semantic/weights"].shape.as_list()[2]
            to_save[f"{config.backbone}/logits/weights"] = tf.Variable(
                tf.random.normal([1, 1, depth, imagenet_classes]), name="imagenet_w")
            to_save[f"{config.backbone}/logits/biases"] = tf.Variable(
                tf.zeros([imagenet_classes]), name="imagenet_b")
        for name, value in (extra or {}).items():
            to_save[name] = tf.Variable(value, name=name.replace("/", "_"))
        write_version = (tf.compat.v1.train.SaverDef.V1 if version == "V1"
                         else tf.compat.v1.train.SaverDef.V2)
        saver = tf.compat.v1.train.Saver(to_save, write_version=write_version)
        # The hand-set values are fed to the initializers, all in one run (``variable.load``
        # runs the session once per variable: 40 s of executor set-up for ResNet-101).
        feeds = {}
        for name, variable in variables.items():
            given = values(name, variable.shape.as_list()) if values is not None else None
            if given is not None:
                feeds[variable.initializer.inputs[1]] = given
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
            saver.save(session, str(path), write_meta_graph=False)
    return str(path)


def routed_bands(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertical red / green / blue / black bands, and the mask the routed network gives them."""
    colours = list(ROUTED_CLASSES)
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    edges = np.linspace(0, width, len(colours) + 1).astype(int)
    for colour, start, stop in zip(colours, edges, edges[1:], strict=False):
        image[:, start:stop] = colour
        mask[:, start:stop] = ROUTED_CLASSES[colour]
    return image, mask


def interior(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels at least ``margin`` away from a class edge (where stride-8/16 logits blur)."""
    keep = np.ones(mask.shape, bool)
    for axis in (0, 1):
        change = np.diff(mask.astype(int), axis=axis) != 0
        for y, x in zip(*np.nonzero(change), strict=True):
            keep[max(0, y - margin):y + margin + 1, max(0, x - margin):x + margin + 1] = False
    return keep


def routed_stripes(width: int, height: int, stripe: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertical stripes ``stripe`` pixels wide cycling red, black, green, black, blue, black,
    and the mask the routed network gives them (thin structures for the tiling tests)."""
    cycle = [(255, 0, 0), (0, 0, 0), (0, 255, 0), (0, 0, 0), (0, 0, 255), (0, 0, 0)]
    index = (np.arange(width) // stripe) % len(cycle)
    colours = np.array(cycle, np.uint8)[index]
    classes = np.array([ROUTED_CLASSES[c] for c in cycle], np.uint8)[index]
    image = np.broadcast_to(colours[None], (height, width, 3)).copy()
    mask = np.broadcast_to(classes[None], (height, width)).copy()
    return image, mask
