"""Data: every error names its file; TFRecords round-trip; the synthetic set is deterministic."""

import shutil

import numpy as np
import pytest
from PIL import Image

from model.train import data, synthetic


@pytest.fixture
def voc(tmp_path, synthetic_voc):
    copy = tmp_path / "voc"
    shutil.copytree(synthetic_voc, copy)
    return copy


def first(voc, split="train"):
    return data.voc_examples(voc, split)[0]


def test_synthetic_is_valid_deterministic_and_voc_like(tmp_path, synthetic_voc):
    examples = data.voc_examples(synthetic_voc, "train")
    assert len(examples) == 6 and len(data.voc_examples(synthetic_voc, "val")) == 3
    data.check_examples(examples, 21)
    values = np.concatenate([data.read_label(e.label, 21).ravel() for e in examples])
    assert data.IGNORE_LABEL in values  # the VOC-style boundary band
    assert len(set(np.unique(values)) - {0, 255}) >= 2  # several object classes
    with Image.open(examples[0].label) as label:
        assert label.mode == "P"
    again = synthetic.write_dataset(tmp_path / "again", train=6, val=3, size=64, seed=3)
    other = synthetic.write_dataset(tmp_path / "other", train=6, val=3, size=64, seed=4)
    name = examples[0].image.relative_to(synthetic_voc)
    assert (again / name).read_bytes() == examples[0].image.read_bytes()
    assert (other / name).read_bytes() != examples[0].image.read_bytes()


def test_missing_split_file_is_named(voc):
    with pytest.raises(data.DataError, match=r"split file .*test\.txt not found"):
        data.voc_examples(voc, "test")


def test_missing_image_is_named(voc):
    example = first(voc)
    example.image.unlink()
    with pytest.raises(data.DataError, match=rf"image {example.image} not found"):
        data.voc_dataset(voc, "train", 21)


def test_label_of_another_size_is_named(voc):
    example = first(voc)
    with Image.open(example.label) as label:
        label.crop((0, 0, label.width - 3, label.height)).save(example.label)
    with pytest.raises(data.DataError, match=rf"label {example.label} is .* its image"):
        data.voc_dataset(voc, "train", 21)


def test_label_value_out_of_range_is_named(voc):
    example = first(voc)
    with Image.open(example.label) as label:
        values = np.asarray(label).copy()
        palette = label.getpalette()
    values[0, 0] = 30
    out = Image.fromarray(values, mode="P")
    out.putpalette(palette)
    out.save(example.label)
    with pytest.raises(data.DataError, match=rf"label {example.label} has values 30 >= "
                                             r"num_classes 21"):
        data.voc_dataset(voc, "train", 21)


def test_rgb_label_is_named(voc):
    example = first(voc)
    with Image.open(example.label) as label:
        label.convert("RGB").save(example.label)
    with pytest.raises(data.DataError, match=rf"label {example.label} is a RGB image"):
        data.voc_dataset(voc, "train", 21)


def test_voc_reader_yields_class_ids_not_palette_colours(synthetic_voc):
    item = next(data.voc_dataset(synthetic_voc, "train", 21).as_numpy_iterator())
    example = first(synthetic_voc)
    np.testing.assert_array_equal(item["label"][..., 0], data.read_label(example.label, 21))
    assert item["image"].shape[:2] == item["label"].shape[:2] and item["image"].shape[2] == 3


def test_tfrecords_round_trip(tmp_path, synthetic_voc):
    files = data.write_tfrecords(synthetic_voc, tmp_path / "records", num_shards=2)
    assert [f.name for f in files] == ["train-00000-of-00002.tfrecord",
                                       "train-00001-of-00002.tfrecord",
                                       "val-00000-of-00002.tfrecord",
                                       "val-00001-of-00002.tfrecord"]
    from_records = {item["name"].decode(): item for item in
                    data.dataset(tmp_path / "records", "val", 21).as_numpy_iterator()}
    from_voc = {item["name"].decode(): item for item in
                data.dataset(synthetic_voc, "val", 21).as_numpy_iterator()}
    assert sorted(from_records) == sorted(from_voc)
    for name, item in from_voc.items():
        np.testing.assert_array_equal(from_records[name]["label"], item["label"])
        # The same JPEG, decoded by TensorFlow vs Pillow (their chroma upsampling differs).
        assert np.abs(from_records[name]["image"].astype(int) - item["image"]).mean() < 1.5
    records = {name: (encoded, label) for name, encoded, label in
               data.load_examples(tmp_path / "records", "val", 21)}
    for name, encoded, label in data.load_examples(synthetic_voc, "val", 21):
        assert records[name][0] == encoded  # the JPEG bytes travel untouched
        np.testing.assert_array_equal(records[name][1], label)


def test_tfrecord_with_bad_label_names_the_record(tmp_path, voc):
    example = first(voc)
    with Image.open(example.label) as label:
        values = np.asarray(label).copy()
    values[0, 0] = 40
    # Written past the converter's checks, as a foreign tool might.
    import tensorflow as tf

    record = tf.train.Example(features=tf.train.Features(feature={
        data.KEY_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[example.image.read_bytes()])),
        data.KEY_FILENAME: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"bad_one"])),
        data.KEY_HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[values.shape[0]])),
        data.KEY_WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[values.shape[1]])),
        data.KEY_LABEL: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[data._index_png(values)])),
    }))
    path = tmp_path / "train-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record.SerializeToString())
    with pytest.raises(tf.errors.InvalidArgumentError, match="record bad_one: label value"):
        list(data.tfrecord_dataset(tmp_path, "train", 21))
