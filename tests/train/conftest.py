"""Fixtures of the training tests: a small synthetic VOC directory and a briefly trained RUN."""

from pathlib import Path

import pytest

from app.cli.main import main
from tests.train.training_factory import TINY


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``atrous data synthetic``: 6 train + 3 val scenes of 64 px."""
    out = tmp_path_factory.mktemp("voc") / "synthetic"
    assert main(["data", "synthetic", str(out), "--train", "6", "--val", "3", "--size", "64",
                 "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synthetic_voc: Path) -> Path:
    """``atrous train`` for 30 steps: enough that predictions are no longer ties."""
    run = tmp_path_factory.mktemp("runs") / "trained"
    assert main(["train", "--data", str(synthetic_voc), "--out", str(run),
                 "--backbone", TINY.backbone, "--crop-size", str(TINY.input_size),
                 "--steps", "30", "--batch-size", "4", "--learning-rate", "0.05",
                 "--save-every", "30", "--log-every", "10", "--no-progress"]) == 0
    return run


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> Path:
    """The export cache holding trained_run's SavedModel (shared: exporting takes seconds)."""
    from model import checkpoints
    from model.export import cached_export

    cache = tmp_path_factory.mktemp("export-cache")
    config = checkpoints.run_config(trained_run)
    assert config is not None
    cached_export(config, cache, checkpoint=trained_run)
    return cache
