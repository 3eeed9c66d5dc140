"""SavedModel export: parity with the in-process graph in a fresh process that imports
neither tf_slim nor atrous, batching, metadata and reduced precision (the full-size
ResNet-101 masks are in tests/inference/test_resnet101.py)."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from model import checkpoints, export
from model.config import ModelConfig
from model.inference import preprocessing
from model.inference.contract import METADATA_PATH, ModelMetadata
from model.inference.runtimes.savedmodel import SavedModelRunner
from model.nets import network
from tests.checkpoint_factory import write_checkpoint

SMALL = ModelConfig(backbone="cifar_resnet_29", input_size=129, num_classes=6, head="aspp")


def in_process_labels(config, checkpoint, images, sizes):
    """The reference: the inference graph built and restored in this process."""
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.uint8, [None, config.input_size, config.input_size, 3])
        s = tf.compat.v1.placeholder(tf.int32, [None, 2])
        labels = network.predict_labels(x, s, config)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            checkpoints.restore(session, checkpoint, config)
            return session.run(labels, {x: images, s: sizes})


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    ckpt = write_checkpoint(SMALL, root / "ckpt" / "model.ckpt", seed=7)
    metadata = export.export_saved_model(SMALL, root / "saved", checkpoint=ckpt)
    return root / "saved", ckpt, metadata


def test_fresh_process_parity_without_tf_slim_or_atrous(small_export, tmp_path):
    saved, ckpt, _ = small_export
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 129, 129, 3), dtype=np.uint8)
    sizes = np.array([[129, 129], [129, 70], [40, 129]], np.int32)
    np.savez(tmp_path / "batch.npz", images=images, sizes=sizes)
    script = textwrap.dedent(f"""
        import sys, numpy as np, tensorflow as tf
        batch = np.load({str(tmp_path / 'batch.npz')!r})
        model = tf.saved_model.load({str(saved)!r})
        serve = model.signatures["serving_default"]
        out = serve(images=tf.constant(batch["images"]), sizes=tf.constant(batch["sizes"]))
        np.save({str(tmp_path / 'labels.npy')!r}, out["labels"].numpy())
        single = serve(images=tf.constant(batch["images"][1:2]),
                       sizes=tf.constant(batch["sizes"][1:2]))["labels"].numpy()
        np.save({str(tmp_path / 'single.npy')!r}, single)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tf_slim", "model", "app"))
        assert not leaked, leaked
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    labels = np.load(tmp_path / "labels.npy")
    assert labels.dtype == np.uint8 and labels.shape == (3, 129, 129)
    want = in_process_labels(SMALL, ckpt, images, sizes)
    np.testing.assert_array_equal(labels, want)
    assert len(np.unique(labels)) > 1, "a constant mask would make parity vacuous"
    np.testing.assert_array_equal(np.load(tmp_path / "single.npy")[0], labels[1])


def test_metadata_is_written_and_read(small_export):
    saved, ckpt, metadata = small_export
    data = json.loads((saved / METADATA_PATH).read_text())
    assert data["backbone"] == "cifar_resnet_29" and data["head"] == "aspp"
    assert data["trained"] is True and data["weights"] == ckpt
    assert data["labels"][:2] == ["background", "aeroplane"] and len(data["colors"]) == 6
    assert ModelMetadata.read(saved) == metadata
    with pytest.raises(ValueError, match="not an atrous model directory"):
        ModelMetadata.read(saved / "variables")


def test_runner_checks_input_and_keeps_batch_order(small_export):
    runner = SavedModelRunner(small_export[0], warmup_batch_sizes=[1, 2])
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, 129, 129, 3\]"):
        runner(np.zeros((1, 65, 65, 3), np.uint8), np.array([[65, 65]]))
    with pytest.raises(ValueError, match=r"sizes must be int32 \[1, 2\], got \[2, 2\]"):
        runner(np.zeros((1, 129, 129, 3), np.uint8), np.array([[65, 65], [1, 1]]))
    rng = np.random.default_rng(4)
    batch = rng.integers(0, 256, (2, 129, 129, 3), dtype=np.uint8)
    sizes = np.array([[129, 129], [129, 129]])
    together = runner(batch, sizes)
    np.testing.assert_array_equal(together[1], runner(batch[1:], sizes[1:])[0])


def test_export_refuses_to_overwrite_and_random_export_warns(tmp_path):
    config = ModelConfig(backbone="cifar_resnet_20", input_size=65)
    with pytest.warns(export.UntrainedModelWarning, match="random weights"):
        metadata = export.export_saved_model(config, tmp_path / "m")
    assert metadata.trained is False and metadata.weights == "random"
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_saved_model(config, tmp_path / "m")
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        ModelConfig(backbone="cifar_resnet_20", precision="int8")


def test_random_initialisation_is_deterministic(tmp_path):
    config = ModelConfig(backbone="cifar_resnet_20", input_size=65)
    image = np.random.default_rng(5).integers(0, 256, (1, 65, 65, 3), dtype=np.uint8)
    outputs = []
    for name in ("a", "b"):
        with pytest.warns(export.UntrainedModelWarning):
            export.export_saved_model(config, tmp_path / name)
        outputs.append(SavedModelRunner(tmp_path / name)(image, np.array([[65, 65]])))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_cached_export_reuses_the_export(tmp_path):
    config = ModelConfig(backbone="cifar_resnet_20", input_size=65)
    with pytest.warns(export.UntrainedModelWarning):
        first = export.cached_export(config, tmp_path)
    stamp = (first / "saved_model.pb").stat().st_mtime_ns
    again = export.cached_export(config, tmp_path)
    assert again == first and (again / "saved_model.pb").stat().st_mtime_ns == stamp
    other = export.cache_key(ModelConfig(backbone="cifar_resnet_20", input_size=97), None)
    assert other != first.name


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_export_agrees_with_fp32(small_export, tmp_path, precision):
    saved, ckpt, _ = small_export
    low = export.export_saved_model(dataclasses.replace(SMALL, precision=precision),
                                    tmp_path / precision, checkpoint=ckpt)
    assert low.precision == precision
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (2, 129, 129, 3), dtype=np.uint8)
    sizes = np.array([[129, 129], [100, 129]])
    want = SavedModelRunner(saved)(images, sizes)
    got = SavedModelRunner(tmp_path / precision)(images, sizes)
    assert (got == want).mean() > 0.9


# The full ResNet-101 513 masks (hand-set weights, known answer): tests/inference/test_resnet101.py


def test_letterbox_and_restore_geometry():
    image = Image.new("RGB", (1, 10000), (255, 0, 0))
    canvas, size = preprocessing.letterbox(image, 513)
    assert canvas.shape == (513, 513, 3) and size == (513, 1)
    assert preprocessing.resized_shape(49, 7, 513) == (73, 513)  # never 512 from float error
    labels = np.zeros((513, 513), np.uint8)
    labels[:513, :1] = 3
    assert preprocessing.restore_mask(labels, size, (1, 10000)).shape == (10000, 1)
    assert set(np.unique(preprocessing.restore_mask(labels, size, (1, 10000)))) == {3}
