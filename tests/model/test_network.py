"""Slim-style checks of the segmentation network on tiny block tables (after tf-slim's
resnet_v1_test.py): end points, logits shapes per output stride, and the atrous property."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from model.config import ModelConfig
from model.nets import network
from model.nets.backbones import BACKBONES, get_backbone
from tests.checkpoint_factory import tiny


def build(config: ModelConfig, size: int, *, backbone=None, nominal=False, images=None):
    if images is None:
        images = tf.compat.v1.placeholder(tf.float32, [2, size, size, 3])
    logits, end_points = network.segmentation_logits(
        images, config, is_training=False, backbone=backbone, nominal=nominal)
    return images, logits, end_points


@pytest.mark.parametrize("name", ["resnet_v1_50", "resnet_v2_50"])
def test_end_point_names(name):
    with tf.Graph().as_default():
        _, _, end_points = build(ModelConfig(backbone=name), 65, backbone=tiny(name))
    expected = {f"{name}/block{b}" for b in (1, 2, 3, 4)} | {
        f"{name}/block{b}/unit_{u}/bottleneck_v{name[8]}" for b in (1, 2, 3, 4) for u in (1, 2)}
    assert expected <= set(end_points), sorted(end_points)
    assert {"features", "logits"} <= set(end_points)


@pytest.mark.parametrize("name", ["resnet_v1_50", "resnet_v2_101", "cifar_resnet_20",
                                  "cifar_resnet_29"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("head", ["logits", "aspp"])
def test_logits_shape_per_output_stride(name, output_stride, head):
    spec = tiny(name) if name.startswith("resnet") else get_backbone(name)
    if output_stride > spec.nominal_stride:
        with pytest.raises(ValueError, match="exceeds the nominal stride 16"):
            ModelConfig(backbone=name, output_stride=output_stride)
        return
    config = ModelConfig(backbone=name, output_stride=output_stride, head=head, num_classes=5)
    with tf.Graph().as_default():
        _, logits, _ = build(config, 65, backbone=spec)
    side = 64 // output_stride + 1
    assert logits.shape.as_list() == [2, side, side, 5]


def test_full_size_logits_shapes():
    """DeepLab's numbers: 513x513 gives 33x33 logits at OS16 and 65x65 at OS8."""
    assert ModelConfig(output_stride=16).logits_size == 33
    assert ModelConfig(output_stride=8).logits_size == 65
    with tf.Graph().as_default():
        _, logits, _ = build(ModelConfig(), 513)  # full ResNet-101, graph only
        assert logits.shape.as_list() == [2, 33, 33, 21]


@pytest.mark.parametrize("name", ["resnet_v1_50", "resnet_v2_50", "cifar_resnet_20",
                                  "cifar_resnet_29"])
def test_atrous_output_equals_subsampled_dense_output(name):
    """A denser network, subsampled to the nominal stride, equals the nominal network."""
    spec = tiny(name) if name.startswith("resnet") else get_backbone(name)
    nominal = spec.nominal_stride
    size = 65
    config = ModelConfig(backbone=name, num_classes=4, output_stride=8)
    rng = np.random.default_rng(0)
    feed = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(0)
        images, expected, _ = build(config, size, backbone=spec, nominal=True)
        outputs = {}
        with tf.compat.v1.variable_scope("", reuse=True):
            for stride in (8, 16, 32):
                if stride < nominal:
                    dense = dataclasses.replace(config, output_stride=stride)
                    _, outputs[stride], _ = build(dense, size, backbone=spec, images=images)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            # Random non-trivial batch-norm statistics, so that the check is not vacuous.
            for v in tf.compat.v1.global_variables():
                if "moving_variance" in v.name or "gamma" in v.name:
                    v.load(rng.uniform(0.5, 1.5, v.shape.as_list()), session)
                elif "moving_mean" in v.name or "beta" in v.name:
                    v.load(rng.uniform(-0.2, 0.2, v.shape.as_list()), session)
            want = session.run(expected, {images: feed})
            assert np.abs(want).max() > 1e-3
            assert outputs, "no denser network was built"
            for stride, tensor in outputs.items():
                got = session.run(tensor, {images: feed})
                factor = nominal // stride
                np.testing.assert_allclose(got[:, ::factor, ::factor], want, atol=1e-4,
                                           err_msg=f"output_stride {stride}")


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet_v3_101'.*resnet_v1_101"):
        ModelConfig(backbone="resnet_v3_101")
    with pytest.raises(ValueError, match="valid backbones"):
        get_backbone("vgg16")


@pytest.mark.parametrize("stride", [4, 12, 64, "16"])
def test_bad_output_stride(stride):
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        ModelConfig(output_stride=stride)


@pytest.mark.parametrize("size", [512, 500, 1, 0])
def test_input_size_must_be_32k_plus_1(size):
    with pytest.raises(ValueError, match="input_size must be 32k\\+1"):
        ModelConfig(input_size=size)


def test_bad_head_and_classes():
    with pytest.raises(ValueError, match="head must be one of logits, aspp"):
        ModelConfig(head="fcn")
    with pytest.raises(ValueError, match="num_classes must be between 1 and 256"):
        ModelConfig(num_classes=0)


def test_registry_tables_and_preprocessing():
    assert get_backbone("resnet_v1_101").units == (3, 4, 23, 3)
    assert get_backbone("resnet_v2_152").units == (3, 8, 36, 3)
    assert get_backbone("resnet_v1_200").units == (3, 24, 36, 3)
    assert get_backbone("resnet_v1_200").imagenet_url is None
    assert {s.preprocessing for s in BACKBONES.values() if s.family == "resnet_v1"} == {
        "mean_subtract"}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        pixel = tf.constant([[[[123.15, 115.90, 103.06]]]])
        v1 = session.run(get_backbone("resnet_v1_50").preprocess(pixel))
        extremes = tf.constant([[[[0.0, 255.0, 127.5]]]])
        v2 = session.run(get_backbone("resnet_v2_50").preprocess(extremes))
    np.testing.assert_allclose(v1, 0, atol=1e-5)
    np.testing.assert_allclose(v2, [[[[-1, 1, 0]]]], atol=1e-6)


def test_aspp_rates_follow_output_stride():
    assert network.aspp_rates(16) == (6, 12, 18)
    assert network.aspp_rates(8) == (12, 24, 36)
    config = ModelConfig(head="aspp")
    assert set(network.head_scopes(config)) >= {"logits", "aspp0", "image_pooling"}
    assert network.head_scopes(ModelConfig()) == ("logits",)
