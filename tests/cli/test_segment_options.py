"""``atrous segment --tiling --scales --flip --classes --format`` offline, on the painted model."""

import numpy as np
from PIL import Image

from app.cli.main import main
from tests import checkpoint_factory


def test_offline_tiling_probabilities_and_class_filters(tiling_saved_model, tmp_path, capsys):
    image, truth = checkpoint_factory.routed_stripes(754, 503, 48)
    path = tmp_path / "stripes.png"
    Image.fromarray(image).save(path)
    model = ["--model", str(tiling_saved_model)]

    assert main(["segment", str(path), *model, "-o", str(tmp_path / "single")]) == 0
    assert main(["segment", str(path), *model, "-o", str(tmp_path / "tiled"), "--tiling", "on",
                 "--classes", "person,car,0"]) == 0
    with Image.open(tmp_path / "single" / "stripes.png") as single_png, \
            Image.open(tmp_path / "tiled" / "stripes.png") as tiled_png:
        single, tiled = np.asarray(single_png), np.asarray(tiled_png)
    assert set(np.unique(tiled)) == {0, 7, 15}  # aeroplane filtered out
    for cls in (7, 15):
        def iou(mask, c=cls):
            return ((mask == c) & (truth == c)).sum() / ((mask == c) | (truth == c)).sum()
        assert iou(tiled) >= 0.8 > 0.5 > iou(single), (cls, iou(tiled), iou(single))

    assert main(["segment", str(path), *model, "-o", str(tmp_path / "p"), "--tiling", "on",
                 "--format", "probabilities", "--classes", "person"]) == 0
    with np.load(tmp_path / "p" / "stripes.npz") as archive:
        assert archive["class_ids"].tolist() == [0, 15]
        assert archive["probabilities"].shape == (2, 503, 754)
        np.testing.assert_array_equal(archive["mask"] == 15, tiled == 15)
    assert main(["segment", str(path), *model, "-o", str(tmp_path / "c"), "--scales", "0.5,1",
                 "--flip", "--format", "confidence"]) == 0
    with Image.open(tmp_path / "c" / "stripes.png") as confidence:
        assert confidence.mode == "L" and confidence.size == (754, 503)

    capsys.readouterr()
    assert main(["segment", str(path), *model, "-o", str(tmp_path / "x"),
                 "--classes", "unicorn"]) == 2
    assert "'unicorn'" in capsys.readouterr().err
    assert main(["segment", str(path), *model, "-o", str(tmp_path / "x"),
                 "--scales", "0.5,9"]) == 2
    assert "'9'" in capsys.readouterr().err
