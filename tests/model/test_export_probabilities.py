"""The SavedModel's second signature: class probabilities beside the unchanged labels."""

import numpy as np

from tests import checkpoint_factory


def test_probabilities_signature_is_a_softmax_whose_argmax_is_the_labels(tiling_saved_model):
    import tensorflow as tf

    from model.inference import contract as serving

    loaded = tf.saved_model.load(str(tiling_saved_model))
    assert set(loaded.signatures) == {serving.SIGNATURE_NAME, serving.PROBABILITIES_SIGNATURE}
    labels_fn = loaded.signatures[serving.SIGNATURE_NAME]
    probabilities_fn = loaded.signatures[serving.PROBABILITIES_SIGNATURE]
    # serving_default is unchanged: same inputs, one uint8 output
    assert set(labels_fn.structured_outputs) == {serving.OUTPUT_LABELS}
    assert set(probabilities_fn.structured_outputs) == {serving.OUTPUT_PROBABILITIES}

    size = 129  # the painted model's input size
    image, expected = checkpoint_factory.routed_bands(size, 100)
    images = np.zeros((2, size, size, 3), np.uint8)
    images[0, :100] = image
    images[1] = np.random.default_rng(0).integers(0, 256, (size, size, 3))  # noise
    sizes = np.array([[100, size], [size, size]], np.int32)
    inputs = {serving.INPUT_IMAGES: tf.constant(images), serving.INPUT_SIZES: tf.constant(sizes)}
    labels = labels_fn(**inputs)[serving.OUTPUT_LABELS].numpy()
    probabilities = probabilities_fn(**inputs)[serving.OUTPUT_PROBABILITIES].numpy()

    assert probabilities.dtype == np.float32
    assert probabilities.shape == (2, size, size, 21)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(-1), labels)
    keep = checkpoint_factory.interior(expected, margin=16)
    np.testing.assert_array_equal(labels[0, :100][keep], expected[keep])
    confident = probabilities[0, :100][keep].max(-1)
    assert confident.min() > 0.99  # the painted logits are far apart
