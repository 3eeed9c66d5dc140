"""Fixtures of the training tests: a small synthetic VOC directory and a briefly trained RUN."""

from pathlib import Path

import pytest

from model.train.trainer import Trainer
from tests.train.training_factory import TINY, tiny_train_config


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.train.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("voc") / "synthetic", train=6, val=3, size=64,
                         seed=3)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synthetic_voc: Path) -> Path:
    """A RUN trained for 30 steps: enough that predictions are no longer ties."""
    run = tmp_path_factory.mktemp("runs") / "trained"
    Trainer(TINY, tiny_train_config(steps=30, batch_size=4, save_every=30, log_every=10,
                                    learning_rate=0.05), run).train(
        synthetic_voc, progress=False)
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
