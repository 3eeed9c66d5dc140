"""Evaluation: metrics from a hand-computed confusion matrix; trained -> exported -> served
masks equal the masks ``atrous eval --save-predictions`` writes."""

import json
import math
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from app.cli.main import main
from model import checkpoints
from model.inference.precision import bf16_units
from model.inference.runtimes import load_runtime
from model.train import data, evaluate
from tests.images import agreement


def test_metrics_from_a_hand_computed_confusion_matrix():
    truth = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    prediction = np.array([[0, 1, 1], [1, 0, 2]], np.uint8)
    confusion = evaluate.ConfusionMatrix(4)
    confusion.update(truth, prediction)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 0] = 1, 1, 2, 1
    np.testing.assert_array_equal(confusion.matrix, expected)
    iou = confusion.per_class_iou()
    # class 0: TP 1, FP 1 (a 2 read as 0), FN 1 (a 0 read as 1); class 1: 2 / (2 + 1)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])  # never seen: not part of the mean
    assert confusion.miou() == pytest.approx(1 / 3)
    assert confusion.pixel_accuracy() == pytest.approx(3 / 5)
    report = confusion.to_dict(["bg", "a", "b", "c"])
    assert report["per_class_iou"] == {"bg": pytest.approx(1 / 3), "a": pytest.approx(2 / 3),
                                       "b": 0.0, "c": None}
    assert report["confusion_matrix"] == expected.tolist()
    assert "mIoU" in confusion.table() and "pixel accuracy" in confusion.table()


def test_served_masks_equal_eval_predictions(trained_run, synthetic_voc, tmp_path,
                                             export_cache, server_factory, capsys):
    cache, predictions, report = export_cache, tmp_path / "pred", tmp_path / "m.json"
    assert main(["eval", "--data", str(synthetic_voc), "--checkpoint", str(trained_run),
                 "--cache-dir", str(cache), "--save-predictions", str(predictions),
                 "--json", str(report)]) == 0
    assert "mIoU" in capsys.readouterr().out
    metrics = json.loads(report.read_text())
    assert set(metrics) >= {"miou", "pixel_accuracy", "per_class_iou", "confusion_matrix"}
    # The JSON agrees with the saved masks scored independently.
    confusion = evaluate.ConfusionMatrix(21)
    for name, _, label in data.load_examples(synthetic_voc, "val", 21):
        with Image.open(predictions / f"{name}.png") as mask:
            confusion.update(label, np.asarray(mask))
    assert confusion.matrix.tolist() == metrics["confusion_matrix"]
    assert len(np.unique(confusion.matrix.sum(0).nonzero())) > 1  # not one class everywhere

    (exported,) = [p for p in cache.iterdir() if (p / "saved_model.pb").is_file()]
    server = server_factory({"ATROUS_MODEL": str(exported)})
    for example in data.voc_examples(synthetic_voc, "val"):
        response = httpx.post(server.url + "/segment", timeout=60,
                              files={"image": example.image.read_bytes()})
        assert response.status_code == 200, response.text
        assert response.content == (predictions / f"{example.name}.png").read_bytes()


def test_bf16_keeps_the_trained_models_miou(synthetic_voc, export_cache, tmp_path):
    """The accuracy budget of ``--inference-precision auto`` on a trained model's val split:
    bf16 loses at most 0.3 mIoU points (and keeps most of fp32's labels).  Each precision
    runs in its own ``atrous eval`` process (OpenVINO stays out of this training process)."""
    if not bf16_units():
        pytest.skip("this CPU has no AMX-BF16 or AVX512-BF16")
    (exported,) = [p for p in export_cache.iterdir() if (p / "saved_model.pb").is_file()]
    reports, masks = {}, {}
    for name in ("fp32", "bf16"):
        report, predictions = tmp_path / f"{name}.json", tmp_path / name
        subprocess.run([sys.executable, "-m", "app.cli", "eval", "--data", str(synthetic_voc),
                        "--checkpoint", str(exported), "--runtime", "openvino",
                        "--inference-precision", name, "--json", str(report),
                        "--save-predictions", str(predictions)], check=True,
                       capture_output=True, timeout=300)
        reports[name] = json.loads(report.read_text())
        masks[name] = [np.asarray(Image.open(p)) for p in sorted(predictions.glob("*.png"))]
    assert reports["bf16"]["model"]["inference_precision"] == "bf16"
    assert reports["fp32"]["model"]["inference_precision"] == "fp32"
    assert len(masks["fp32"]) == 3
    assert reports["fp32"]["miou"] - reports["bf16"]["miou"] <= 0.003, reports
    # A 30-step model's logits are close to ties in places, so fewer labels agree than on
    # the hand-set ResNet-101 (tests/inference/test_resnet101.py holds that budget).
    assert agreement(masks["bf16"], masks["fp32"]) >= 0.98


def test_multi_scale_at_scale_one_equals_single_scale(trained_run, synthetic_voc,
                                                      export_cache):
    from model.export import cached_export

    config = checkpoints.run_config(trained_run)
    exported = cached_export(config, export_cache, checkpoint=trained_run)
    # The in-process multi-scale path computes in fp32: compare it with fp32.
    single = evaluate.evaluate(load_runtime(exported, inference_precision="fp32"),
                               synthetic_voc, "val", 21)
    multi = evaluate.MultiScaleSegmenter(config, trained_run, (1.0,), flip=False)
    np.testing.assert_array_equal(
        evaluate.evaluate(multi, synthetic_voc, "val", 21).confusion.matrix,
        single.confusion.matrix)


class _ColourLogits:
    """A stand-in network: logits are the red and green values, pixel by pixel."""

    def logits(self, images, *, is_training):
        import tensorflow as tf

        assert not is_training
        return tf.cast(images[..., :2], tf.float32) / 10.0


def test_multi_scale_flip_averages_aligned_probabilities():
    from model.config import ModelConfig

    segmenter = object.__new__(evaluate.MultiScaleSegmenter)
    segmenter.config = ModelConfig(backbone="cifar_resnet_20", input_size=33, num_classes=2)
    segmenter.scales, segmenter.flip, segmenter.module = (0.5, 1.0, 1.5), True, _ColourLogits()
    image = np.zeros((1, 33, 33, 3), np.uint8)
    image[0, :, :10] = (200, 20, 0)  # red: class 0 on the left
    image[0, :, 10:30] = (20, 200, 0)  # green: class 1
    labels = segmenter._graph(image, np.array([[33, 30]], np.int32)).numpy()[0]
    # Mirrored predictions are mirrored back: the left stays 0 and the right stays 1
    # (without the flip back, the average would be symmetric about the centre).
    assert (labels[:, 1:8] == 0).all() and (labels[:, 12:28] == 1).all()
    assert (labels[:, 31:] == 0).all()  # the mean-pixel padding: red 123 > green 116
