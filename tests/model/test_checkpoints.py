"""Checkpoint restore: both formats, both naming layouts, ImageNet backbones, and the
one readable error for checkpoints that do not fit."""

import numpy as np
import pytest
import tensorflow as tf

from model import checkpoints
from model.config import ModelConfig
from model.nets import network
from tests.checkpoint_factory import tiny, write_checkpoint

SMALL = ModelConfig(backbone="cifar_resnet_20", input_size=65, num_classes=5)


def restore_into_fresh_graph(config: ModelConfig, path: str, seed: int = 2, backbone=None):
    """Restores ``path`` into a newly initialised graph; returns the report and values."""
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(seed)
        images = tf.compat.v1.placeholder(tf.float32, [1, config.input_size, config.input_size, 3])
        network.segmentation_logits(images, config, is_training=False, backbone=backbone)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            report = checkpoints.restore(session, path, config)
            values = {v.op.name: session.run(v) for v in tf.compat.v1.global_variables()}
    return report, values


def stored(path: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize("version", ["V1", "V2"])
@pytest.mark.parametrize("layout", ["slim", "deeplab"])
def test_round_trip_restores_every_variable(tmp_path, version, layout):
    config = ModelConfig(backbone="resnet_v1_50", input_size=33, num_classes=5)
    r50 = tiny("resnet_v1_50")
    path = write_checkpoint(config, tmp_path / "model.ckpt", layout=layout, version=version,
                            backbone=r50)
    if version == "V1":
        assert (tmp_path / "model.ckpt").is_file()  # one file, as in the slim tarballs
    else:
        assert (tmp_path / "model.ckpt.index").is_file()
    report, values = restore_into_fresh_graph(config, path, backbone=r50)
    saved = stored(path)
    assert report.layout == layout and report.head_restored and report.trained
    assert report.restored == len(values) == len(saved)
    rename = {"resnet_v1_50/logits/": "logits/semantic/"} if layout == "slim" else {}
    for name, value in saved.items():
        for old, new in rename.items():
            name = name.replace(old, new)
        np.testing.assert_array_equal(values[name], value, err_msg=name)
    # Batch-norm moving statistics travel too (and are not the initial zeros/ones).
    mean = values["resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/BatchNorm/moving_mean"]
    assert mean.shape == (1,)


def test_checkpoint_directory_and_index_file_resolve(tmp_path):
    path = write_checkpoint(SMALL, tmp_path / "run" / "model.ckpt-100")
    assert checkpoints.resolve_checkpoint(tmp_path / "run") == path
    assert checkpoints.resolve_checkpoint(path + ".index") == path


def test_training_checkpoint_with_optimizer_slots_restores(tmp_path):
    extra = {"global_step": np.int64(1000),
             "logits/semantic/weights/Momentum": np.zeros([1, 1, 64, 5], np.float32)}
    path = write_checkpoint(SMALL, tmp_path / "model.ckpt", extra=extra)
    report, _ = restore_into_fresh_graph(SMALL, path)
    assert report.trained


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_imagenet_checkpoint_restores_backbone_only(tmp_path, version):
    config = ModelConfig(backbone="resnet_v1_50", input_size=33)
    r50 = tiny("resnet_v1_50")
    path = write_checkpoint(config, tmp_path / "resnet_v1_50.ckpt", layout="slim",
                            version=version, imagenet_classes=1000, backbone=r50)
    report, values = restore_into_fresh_graph(config, path, backbone=r50)
    assert not report.head_restored and not report.trained
    saved = stored(path)
    backbone = [n for n in values if n.startswith("resnet_v1_50/")]
    assert backbone and all(np.array_equal(values[n], saved[n]) for n in backbone)
    assert values["logits/semantic/weights"].shape == (1, 1, 32, 21)


def test_checkpoint_without_head_leaves_head_initialised(tmp_path):
    path = write_checkpoint(SMALL, tmp_path / "backbone.ckpt", head=False)
    report, _ = restore_into_fresh_graph(SMALL, path)
    assert not report.trained and report.restored > 0


def test_wrong_backbone_is_one_readable_error(tmp_path):
    path = write_checkpoint(ModelConfig(backbone="resnet_v1_50", input_size=33),
                            tmp_path / "r50.ckpt", backbone=tiny("resnet_v1_50"))
    config = ModelConfig(backbone="resnet_v1_101", input_size=33)
    with pytest.raises(checkpoints.CheckpointMismatchError) as caught:
        restore_into_fresh_graph(config, path, backbone=tiny("resnet_v1_101"))
    message = str(caught.value)
    assert "does not match resnet_v1_101" in message
    assert "it holds a resnet_v1_50 backbone; pass --backbone resnet_v1_50" in message
    assert "missing from the checkpoint" in message
    assert "resnet_v1_101/conv1/weights" in caught.value.missing
    assert "unexpected in the checkpoint" in message and "resnet_v1_50/" in message
    assert "Traceback" not in message and len(message.splitlines()) < 40, message


def test_wrong_class_count_lists_misshaped_variables(tmp_path):
    path = write_checkpoint(SMALL, tmp_path / "five.ckpt")
    with pytest.raises(checkpoints.CheckpointMismatchError) as caught:
        restore_into_fresh_graph(ModelConfig(backbone="cifar_resnet_20", input_size=65), path)
    assert caught.value.misshaped == [
        "logits/semantic/biases: checkpoint [5], model [21]",
        "logits/semantic/weights: checkpoint [1, 1, 64, 5], model [1, 1, 64, 21]",
    ]
    assert not caught.value.missing and not caught.value.unexpected


def test_aspp_checkpoint_into_logits_head_is_unexpected(tmp_path):
    path = write_checkpoint(SMALL.__class__(**{**SMALL.__dict__, "head": "aspp"}),
                            tmp_path / "aspp.ckpt")
    with pytest.raises(checkpoints.CheckpointMismatchError) as caught:
        restore_into_fresh_graph(SMALL, path)
    assert any(name.startswith("aspp0/") for name in caught.value.unexpected)


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="not found"):
        checkpoints.resolve_checkpoint(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(checkpoints.CheckpointError, match="cannot read checkpoint"):
        checkpoints.read_variable_shapes(str(junk))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="holds 0 checkpoints"):
        checkpoints.resolve_checkpoint(empty)


def test_a_torn_save_s_temporary_beside_a_whole_checkpoint_is_ignored(tmp_path):
    """A process killed while TensorFlow writes a shard leaves ``<shard>.tempstate<n>``:
    the checkpoint beside it still counts, and one with only the temporary is skipped (the
    temporary's name once crashed a resume: its shard count did not parse)."""
    path = write_checkpoint(SMALL, tmp_path / "run" / "model.ckpt-100")
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path / "run"), path)
    shard = next((tmp_path / "run").glob("model.ckpt-100.data-*"))
    (shard.parent / (shard.name + ".tempstate8218325911367251161")).write_bytes(b"torn")
    assert checkpoints.checkpoints_newest_first(tmp_path / "run") == [path]
    shard.unlink()
    assert checkpoints.checkpoints_newest_first(tmp_path / "run") == []
