"""Training data: PASCAL VOC directories and DeepLab-format TFRecords, read with ``tf.data``.

A VOC directory holds ``JPEGImages/<name>.jpg``, ``SegmentationClass/<name>.png`` (palette
PNGs whose pixel values are class ids, 255 = ignore) and
``ImageSets/Segmentation/<split>.txt`` (one name per line).  ``voc_examples`` builds the
file list and ``check_example`` validates every pair on the host, naming the file at
fault, before a single step runs: a data error never surfaces as a TensorFlow traceback
in the middle of training.

TFRecords follow DeepLab's ``build_voc2012_data.py``: ``image/encoded`` (JPEG),
``image/segmentation/class/encoded`` (a single-channel PNG of class ids, the palette
removed), ``image/height``, ``image/width``, ``image/filename``.  They are validated when
written (``write_tfrecords`` checks the VOC directory first) and checked again per record
when read.

Both readers yield ``{"image": uint8 [H, W, 3], "label": uint8 [H, W, 1], "name": string}``.
"""

import dataclasses
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IGNORE_LABEL = 255
SPLITS_DIR = Path("ImageSets") / "Segmentation"
IMAGES_DIR = "JPEGImages"
LABELS_DIR = "SegmentationClass"
# Palette ("P") PNGs are VOC's format; single-channel ("L") index PNGs are what DeepLab's
# remove_gt_colormap.py writes.  Both store class ids as pixel values.
LABEL_MODES = ("P", "L")


class DataError(ValueError):
    """A dataset file that is missing or malformed; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One image/label pair of a VOC directory."""

    name: str
    image: Path
    label: Path


def split_file(root: str | Path, split: str) -> Path:
    return Path(root) / SPLITS_DIR / f"{split}.txt"


def voc_examples(root: str | Path, split: str) -> list[Example]:
    """The examples named by ``ImageSets/Segmentation/<split>.txt``.

    Raises:
        DataError: the directory, the split file, an image or a label is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} not found")
    listing = split_file(root, split)
    if not listing.is_file():
        found = sorted(p.stem for p in (root / SPLITS_DIR).glob("*.txt"))
        raise DataError(f"split file {listing} not found"
                        + (f"; splits present: {', '.join(found)}" if found else ""))
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"split file {listing} lists no images")
    examples = []
    for name in names:
        example = Example(name, root / IMAGES_DIR / f"{name}.jpg",
                          root / LABELS_DIR / f"{name}.png")
        for path, what in ((example.image, "image"), (example.label, "label")):
            if not path.is_file():
                raise DataError(f"{what} {path} not found (listed in {listing})")
        examples.append(example)
    return examples


def read_label(path: str | Path, num_classes: int) -> np.ndarray:
    """Class ids [H, W] of a palette (or single-channel) label PNG, checked.

    Raises:
        DataError: not a palette PNG, unreadable, or a value >= num_classes other than 255.
    """
    try:
        with Image.open(path) as label:
            if label.mode not in LABEL_MODES:
                raise DataError(
                    f"label {path} is a {label.mode} image; labels must be palette PNGs "
                    "whose pixel values are class ids (as VOC's SegmentationClass), "
                    "not colour images")
            values = np.asarray(label, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"label {path} cannot be read: {e}") from None
    bad = np.unique(values[(values >= num_classes) & (values != IGNORE_LABEL)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8])
        raise DataError(f"label {path} has values {shown} >= num_classes {num_classes} "
                        f"(only class ids and {IGNORE_LABEL} = ignore are allowed)")
    return values


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) read from the image header."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as e:
        raise DataError(f"image {path} cannot be read: {e}") from None


def check_example(example: Example, num_classes: int) -> None:
    """Validates one pair: readable image, palette label of the same size, values in range."""
    values = read_label(example.label, num_classes)
    width, height = image_size(example.image)
    if values.shape != (height, width):
        raise DataError(f"label {example.label} is {values.shape[1]}x{values.shape[0]} but its "
                        f"image {example.image} is {width}x{height}")


def check_examples(examples: Iterable[Example], num_classes: int) -> None:
    for example in examples:
        check_example(example, num_classes)


def _load_pair(image_path: bytes, label_path: bytes) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(image_path.decode()) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    with Image.open(label_path.decode()) as label:
        values = np.asarray(label, dtype=np.uint8)[..., None]
    return pixels, values


def voc_dataset(root: str | Path, split: str, num_classes: int, *,
                check: bool = True) -> Any:
    """A ``tf.data.Dataset`` of one VOC split, in file order (shuffle downstream).

    Labels are decoded with Pillow (``tf.io.decode_png`` would expand a palette to its
    colours), images with Pillow too so both read the same JPEG decoder as the server.
    """
    import tensorflow as tf

    examples = voc_examples(root, split)
    if check:
        check_examples(examples, num_classes)
    names = [e.name for e in examples]
    images = [str(e.image) for e in examples]
    labels = [str(e.label) for e in examples]

    def load(name: Any, image_path: Any, label_path: Any) -> dict[str, Any]:
        image, label = tf.numpy_function(_load_pair, [image_path, label_path],
                                         [tf.uint8, tf.uint8], stateful=False)
        image.set_shape([None, None, 3])
        label.set_shape([None, None, 1])
        return {"image": image, "label": label, "name": name}

    return tf.data.Dataset.from_tensor_slices((names, images, labels)).map(
        load, num_parallel_calls=tf.data.AUTOTUNE)


# DeepLab's TFRecord keys (datasets/build_data.py).
KEY_IMAGE = "image/encoded"
KEY_FILENAME = "image/filename"
KEY_FORMAT = "image/format"
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"
KEY_CHANNELS = "image/channels"
KEY_LABEL = "image/segmentation/class/encoded"
KEY_LABEL_FORMAT = "image/segmentation/class/format"


def _index_png(values: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(values, mode="L").save(out, format="PNG")
    return out.getvalue()


def _serialize(example: Example, num_classes: int) -> bytes:
    import tensorflow as tf

    check_example(example, num_classes)
    values = read_label(example.label, num_classes)
    encoded = example.image.read_bytes()

    def bytes_feature(value: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {
        KEY_IMAGE: bytes_feature(encoded),
        KEY_FILENAME: bytes_feature(example.name.encode()),
        KEY_FORMAT: bytes_feature(b"jpeg"),
        KEY_HEIGHT: int_feature(values.shape[0]),
        KEY_WIDTH: int_feature(values.shape[1]),
        KEY_CHANNELS: int_feature(3),
        KEY_LABEL: bytes_feature(_index_png(values)),
        KEY_LABEL_FORMAT: bytes_feature(b"png"),
    }
    return bytes(tf.train.Example(
        features=tf.train.Features(feature=features)).SerializeToString())


def write_tfrecords(root: str | Path, out_dir: str | Path, *,
                    splits: Sequence[str] = ("train", "val"), num_classes: int = 21,
                    num_shards: int = 1) -> list[Path]:
    """Converts VOC splits into DeepLab TFRecords ``<split>-0000i-of-0000n.tfrecord``.

    Every pair is validated first; the first bad file stops the conversion.
    """
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split in splits:
        examples = voc_examples(root, split)
        shards = max(1, min(num_shards, len(examples)))
        for shard in range(shards):
            path = out_dir / f"{split}-{shard:05d}-of-{shards:05d}.tfrecord"
            with tf.io.TFRecordWriter(str(path)) as writer:
                for example in examples[shard::shards]:
                    writer.write(_serialize(example, num_classes))
            written.append(path)
    return written


def tfrecord_files(path: str | Path, split: str) -> list[Path]:
    """The shards of ``split`` in a directory (``<split>-*.tfrecord``), or one file."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob(f"{split}-*.tfrecord")) + sorted(path.glob(f"{split}.tfrecord"))
    if not files:
        raise DataError(f"no TFRecords for split {split!r} in {path} "
                        f"(expected {split}-*.tfrecord)")
    return files


def tfrecord_dataset(path: str | Path, split: str, num_classes: int) -> Any:
    """A ``tf.data.Dataset`` of DeepLab TFRecords, each record checked as it is decoded."""
    import tensorflow as tf

    features = {
        KEY_IMAGE: tf.io.FixedLenFeature([], tf.string),
        KEY_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
        KEY_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        KEY_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        KEY_LABEL: tf.io.FixedLenFeature([], tf.string),
    }

    def decode(record: Any) -> dict[str, Any]:
        parsed = tf.io.parse_single_example(record, features)
        name = parsed[KEY_FILENAME]
        image = tf.io.decode_jpeg(parsed[KEY_IMAGE], channels=3)
        label = tf.io.decode_png(parsed[KEY_LABEL], channels=1)
        where = tf.strings.join(["record ", name, ": "])
        checks = [
            tf.debugging.assert_equal(
                tf.shape(label)[:2], tf.shape(image)[:2],
                message=tf.strings.join([where, "label size differs from its image"])),
            tf.debugging.assert_equal(
                tf.reduce_all((label < num_classes) | (label == IGNORE_LABEL)), True,
                message=tf.strings.join(
                    [where, f"label value >= num_classes {num_classes} (not {IGNORE_LABEL})"])),
        ]
        with tf.control_dependencies(checks):
            label = tf.identity(label)
        return {"image": image, "label": label, "name": name}

    files = [str(p) for p in tfrecord_files(path, split)]
    return tf.data.TFRecordDataset(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def is_tfrecord_source(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() or (path.is_dir() and any(path.glob("*.tfrecord")))


def dataset(path: str | Path, split: str, num_classes: int) -> Any:
    """A VOC directory or a TFRecord directory/file, whichever ``path`` is."""
    if is_tfrecord_source(path):
        return tfrecord_dataset(path, split, num_classes)
    return voc_dataset(path, split, num_classes)


def load_examples(path: str | Path, split: str,
                  num_classes: int) -> list[tuple[str, bytes, np.ndarray]]:
    """(name, encoded image bytes, label [H, W]) of a split, host-side, for evaluation.

    The bytes are decoded by the caller with the server's decoder (``model.imaging``), so
    evaluation sees exactly the pixels a served request would.
    """
    if is_tfrecord_source(path):
        import tensorflow as tf

        parsed = tf.data.TFRecordDataset([str(p) for p in tfrecord_files(path, split)])
        out = []
        for record in parsed.as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            feature = example.features.feature
            name = feature[KEY_FILENAME].bytes_list.value[0].decode()
            with Image.open(io.BytesIO(feature[KEY_LABEL].bytes_list.value[0])) as label:
                values = np.asarray(label, dtype=np.uint8)
            out.append((name, feature[KEY_IMAGE].bytes_list.value[0], values))
        return out
    loaded = []
    for example in voc_examples(path, split):
        check_example(example, num_classes)
        loaded.append((example.name, example.image.read_bytes(),
                       read_label(example.label, num_classes)))
    return loaded
