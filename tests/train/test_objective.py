"""The recipe's functions against hand computations."""

import math

import numpy as np
import pytest
import tensorflow as tf

from model.train import objective


def test_cross_entropy_ignores_255():
    logits = np.array([[[[2.0, 0.0], [0.0, 3.0]]]], np.float32)  # [1, 1, 2, 2]
    labels = np.array([[[[0], [255]]]], np.uint8)
    total, count = objective.cross_entropy_sum(tf.constant(logits), tf.constant(labels), 2)
    assert float(count) == 1.0
    assert float(total) == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)), rel=1e-6)


def test_pixel_counts():
    logits = np.array([[[[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]]]], np.float32)
    labels = np.array([[[[0], [0], [255]]]], np.uint8)
    correct, counted = objective.pixel_counts(tf.constant(logits), tf.constant(labels))
    assert (float(correct), float(counted)) == (1.0, 2.0)


def test_weight_decay_is_l2_on_convolution_weights_only():
    weights = tf.Variable(np.full((1, 1, 2, 2), 2.0, np.float32), name="net/conv/weights")
    biases = tf.Variable(np.full((2,), 5.0, np.float32), name="net/conv/biases")
    gamma = tf.Variable(np.full((2,), 3.0, np.float32), name="net/BatchNorm/gamma")
    loss = objective.weight_decay_loss([weights, biases, gamma], 1e-4)
    assert float(loss) == pytest.approx(1e-4 * 0.5 * 4 * 4.0)


def test_poly_learning_rate():
    assert objective.poly_learning_rate(0, 100) == pytest.approx(0.007)
    assert objective.poly_learning_rate(50, 100) == pytest.approx(0.007 * 0.5 ** 0.9)
    assert objective.poly_learning_rate(100, 100) == 0.0
    assert objective.poly_learning_rate(150, 100) == 0.0
