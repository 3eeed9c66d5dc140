"""Bulk segmentation of image sets: ``atrous segment-dataset`` and its Python API.

``segment_dataset(JobConfig(...)) -> JobReport``.  The per-batch function (``rows``) is
engine-free; ``engines`` runs it on a local loop or a Ray Data actor pool; ``sources`` lists
SRC; ``store`` owns DST (``docs/batch.md``).
"""

from app.batch.engines import ENGINES, RayOptions
from app.batch.job import JobConfig, JobFailedError, JobReport, model_fingerprint, segment_dataset
from app.batch.rows import ERROR_CODES, ModelSpec

__all__ = ["ENGINES", "ERROR_CODES", "JobConfig", "JobFailedError", "JobReport", "ModelSpec",
           "RayOptions", "model_fingerprint", "segment_dataset"]
