"""The served network itself, ResNet-101 OS16 at 513 x 513, on every runtime.

A hand-set "colour routing" ResNet-101 (``tests.checkpoint_factory``: every residual
branch zero, the shortcuts carry the colours, so its answer is known and its logits do not
tie), saved in the slim layout and V1 single-file format of the published tarballs, is
exported as a SavedModel and as ONNX.  TensorFlow must give the known masks; OpenVINO (the
default CPU runtime, on the SavedModel) pinned to fp32 and ONNX Runtime (on the ONNX export)
must give TensorFlow's labels on real-looking images, and OpenVINO TensorFlow's
probabilities; OpenVINO in bf16 (the default on a CPU with bf16 units) must stay within the
accuracy budget (``model.inference.precision.LABEL_AGREEMENT_BUDGET``) of fp32's labels.  All
101 layers and the atrous block run at full size: a small backbone would not show a
conversion that mishandles a dilated unit or the 513 letterbox.
"""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.config import ModelConfig
from model.convert import convert_model
from model.export import export_saved_model
from model.inference.contract import Segmenter
from model.inference.imaging import load_image
from model.inference.pipeline import segment_images
from model.inference.precision import LABEL_AGREEMENT_BUDGET
from model.inference.preprocessing import letterbox
from model.inference.runtimes import load_runtime
from tests.checkpoint_factory import color_routing_value, interior, routed_bands, write_checkpoint
from tests.images import agreement, photo_like

pytestmark = pytest.mark.slow

R101 = ModelConfig()  # resnet_v1_101, OS16, 513, 21 classes: the product's default
# Landscape, square and portrait, one larger than the input (scaled down) and one smaller,
# and the routing's red / green / blue / black bands, whose mask is known.
BANDS = routed_bands(600, 420)
IMAGES = [*(photo_like(w, h, seed) for seed, (w, h) in
            enumerate([(640, 480), (513, 513), (300, 520)], start=20)),
          Image.fromarray(BANDS[0])]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("r101")
    ckpt = write_checkpoint(R101, root / "resnet_v1_101.ckpt", layout="slim", version="V1",
                            values=color_routing_value)
    metadata = export_saved_model(R101, root / "savedmodel", checkpoint=ckpt)
    assert metadata.trained
    convert_model(root / "savedmodel", root / "onnx", "onnx")
    return {"savedmodel": root / "savedmodel", "onnx": root / "onnx"}


@pytest.fixture(scope="module")
def tensorflow(exports) -> Segmenter:
    return load_runtime(exports["savedmodel"], "tensorflow")


@pytest.fixture(scope="module")
def openvino(exports) -> Segmenter:
    """What ``atrous serve`` runs on a CPU: OpenVINO on the SavedModel, in the inference
    precision ``auto`` picks for this CPU."""
    segmenter = load_runtime(exports["savedmodel"])
    assert segmenter.runtime == "openvino"
    return segmenter


@pytest.fixture(scope="module")
def openvino_fp32(exports, openvino) -> Segmenter:
    """OpenVINO pinned to DeepLab's exact arithmetic (the default itself on a CPU without
    bf16 units)."""
    if openvino.inference_precision.name == "fp32":
        return openvino
    return load_runtime(exports["savedmodel"], "openvino", inference_precision="fp32")


def assert_mask_matches(got: np.ndarray, want: np.ndarray, margin: int) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    # Away from colour edges (where OS16 logits blur) every pixel must be right.
    keep = interior(want, margin)
    np.testing.assert_array_equal(got[keep], want[keep])
    assert (got == want).mean() > 0.9
    assert set(np.unique(got)) == set(np.unique(want))


def test_resnet101_513_mask_for_non_square_image(tensorflow):
    image, want = routed_bands(640, 360)
    [mask] = segment_images(tensorflow, [Image.fromarray(image)])
    assert_mask_matches(mask, want, margin=2 * 16 * 640 // 513)


def test_resnet101_513_mask_for_exif_rotated_jpeg(tensorflow):
    """The stored pixels are rotated; the mask must follow the displayed orientation."""
    displayed, want = routed_bands(300, 480)
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)  # 480 x 300
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    image = load_image(buffer.getvalue(), max_pixels=10**7)
    assert image.size == (300, 480)
    [mask] = segment_images(tensorflow, [image])
    assert_mask_matches(mask, want, margin=2 * 16 * 480 // 513)


@pytest.fixture(scope="module")
def reference(tensorflow) -> list[np.ndarray]:
    masks = segment_images(tensorflow, IMAGES)
    # The bands are their known classes away from the edges, and the masks hold several
    # classes, so that agreement below is not agreement on one class.
    assert_mask_matches(masks[-1], BANDS[1], margin=2 * 16 * 600 // 513)
    assert len(np.unique(np.concatenate([m.ravel() for m in masks]))) >= 3
    return masks


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_resnet101_513_labels_are_tensorflows_on_every_runtime(request, exports, reference,
                                                                runtime):
    segmenter = (request.getfixturevalue("openvino_fp32") if runtime == "openvino"
                 else load_runtime(exports["onnx"], runtime))
    assert segmenter.runtime == runtime and segmenter.metadata.backbone == "resnet_v1_101"
    assert segmenter.inference_precision.name == "fp32"
    assert agreement(segment_images(segmenter, IMAGES), reference) >= 0.999


def test_resnet101_513_default_labels_are_within_the_budget_of_fp32s(openvino, reference):
    """What the server runs on this CPU: bf16 (with bf16 units) or fp32 (without)."""
    budget = 0.999 if openvino.inference_precision.name == "fp32" else LABEL_AGREEMENT_BUDGET
    assert agreement(segment_images(openvino, IMAGES), reference) >= budget


def boxed_batch(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    boxed = [letterbox(image, 513) for image in images]
    return (np.stack([canvas for canvas, _ in boxed]),
            np.array([valid for _, valid in boxed], np.int32))


def test_resnet101_513_probabilities_are_tensorflows_on_openvino(tensorflow, openvino_fp32):
    images, sizes = boxed_batch(IMAGES[:2])
    got = openvino_fp32.probabilities(images, sizes)
    want = tensorflow.probabilities(images, sizes)
    for i, (height, width) in enumerate(sizes):
        np.testing.assert_allclose(got[i, :height, :width], want[i, :height, :width], atol=1e-4)


def test_resnet101_513_bf16_stays_within_the_accuracy_budget(openvino, openvino_fp32):
    """bf16 on this CPU's bf16 units against fp32, on every real-looking image: labels
    within the budget, probabilities close, the labels still their argmax."""
    if openvino.inference_precision.name != "bf16":
        pytest.skip(f"no bf16 here: {openvino.inference_precision.reason}")
    fp32 = segment_images(openvino_fp32, IMAGES)
    assert agreement(segment_images(openvino, IMAGES), fp32) >= LABEL_AGREEMENT_BUDGET
    images, sizes = boxed_batch(IMAGES[:2])
    got, want = openvino.probabilities(images, sizes), openvino_fp32.probabilities(images, sizes)
    labels = openvino(images, sizes)
    for i, (height, width) in enumerate(sizes):
        error = np.abs(got[i, :height, :width] - want[i, :height, :width])
        assert error.mean() <= 0.01, error.mean()
        assert (got[i, :height, :width].argmax(-1) == labels[i, :height, :width]).mean() >= 0.999
