"""One bulk job: list SRC, skip what DST already has, run an engine, finalise, report."""

import concurrent.futures
import dataclasses
import os
import time
from typing import Any

from app.batch import engines
from app.batch.rows import ModelSpec
from app.batch.sources import Item, list_source
from app.batch.store import Store, new_run_id
from model.inference import formats

__all__ = ["JobConfig", "JobFailedError", "JobReport", "model_fingerprint", "segment_dataset"]


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """A bulk job, validated at construction."""

    source: str
    destination: str
    model: ModelSpec
    engine: str = "ray"
    ray: engines.RayOptions = engines.RayOptions()
    batch_size: int = 4
    output: str = "parquet"
    resume: bool = False
    max_bytes: int = 256 * 2**20
    progress: bool = True

    def __post_init__(self) -> None:
        if self.engine not in engines.ENGINES:
            raise ValueError(f"engine must be ray or local, got {self.engine!r}")
        if self.output not in ("parquet", "png"):
            raise ValueError(f"output must be parquet or png, got {self.output!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.ray.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.ray.workers}")
        if self.ray.gpus_per_worker < 0 or self.ray.max_restarts < 0:
            raise ValueError("gpus_per_worker and max_restarts must not be negative")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")


@dataclasses.dataclass(frozen=True)
class JobReport:
    """What a job did; ``to_dict`` is ``DST/_summary.json``."""

    source: str
    destination: str
    engine: str
    output: str
    model: str  # fingerprint
    inputs: int  # images listed in SRC
    skipped: int  # already ok in DST (--resume)
    processed: int  # run this time
    ok: int  # inputs with an ok row in DST now
    failed: dict[str, tuple[str, str]]  # key -> (error code, message)
    missing: tuple[str, ...]  # inputs without a row: the job did not complete
    superseded: int  # rows dropped at the end (retried errors, batches run twice)
    seconds: float  # listing SRC, Ray's start and shutdown, the run (not the finalise)
    startup_seconds: float  # Ray's start (0 for local, or when already connected)
    completed: bool

    @property
    def errors(self) -> int:
        return len(self.failed)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0: every input ok; 1: some are error rows; 2: the job did not complete."""
        return 2 if not self.completed else (1 if self.failed else 0)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["failed"] = [{"key": k, "error_code": c, "error": m}
                          for k, (c, m) in sorted(self.failed.items())]
        data["missing"] = list(self.missing)
        data.update(errors=self.errors, images_per_s=round(self.images_per_s, 3),
                    seconds=round(self.seconds, 3),
                    startup_seconds=round(self.startup_seconds, 3))
        return data


class JobFailedError(RuntimeError):
    """The job itself failed (not an image): the rows written so far stay in DST, and a
    rerun with ``resume`` continues from them."""

    def __init__(self, message: str, report: JobReport) -> None:
        super().__init__(message)
        self.report = report


def segment_dataset(config: JobConfig) -> JobReport:
    """Runs the job; returns its report (also written to ``DST/_summary.json``).

    With the Ray engine, Ray starts (or is joined) first, on this thread, while another one
    lists SRC, reads DST and fingerprints the model (``engines.RaySession``).

    Raises:
        ValueError: a bad SRC, DST or option, or Ray not installed (nothing was run).
        FileExistsError: DST holds results and ``resume`` is off.
        JobFailedError: the engine failed part way (``report`` says how far it got).
        KeyboardInterrupt: interrupted; the parts written so far are complete.
    """
    start = time.monotonic()
    session = engines.RaySession(config.ray) if config.engine == "ray" else None
    failure: BaseException | None = None
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="atrous-job") as pool:
        preparing = pool.submit(_prepare, config)
        try:
            if session is not None:
                try:
                    session.start()
                except ValueError:
                    raise
                except Exception as e:  # noqa: BLE001 - no cluster: the job failed
                    failure = e
            job = preparing.result()
            if failure is None:
                try:
                    _run(config, job)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - Ray's and the runtime's: the job failed
                    failure = e
        finally:
            if session is not None:
                session.stop()
    seconds = time.monotonic() - start
    tally = job.store.finalise([item.key for item in job.items])
    report = JobReport(
        source=config.source, destination=config.destination, engine=config.engine,
        output=config.output, model=job.spec.fingerprint, inputs=len(job.items),
        skipped=len(job.done), processed=len(job.pending), ok=tally.ok, failed=tally.errors,
        missing=tally.missing, superseded=tally.superseded, seconds=seconds,
        startup_seconds=session.startup_seconds if session is not None else 0.0,
        completed=failure is None and not tally.missing)
    job.store.write_summary(report.to_dict(), success=report.completed)
    if failure is not None:
        raise JobFailedError(f"{type(failure).__name__}: {failure}", report) from failure
    return report


@dataclasses.dataclass(frozen=True)
class _Job:
    """What the driver knows before any image runs."""

    items: list[Item]  # every input
    store: Store
    done: set[str]  # keys with an ok row already (--resume)
    pending: list[Item]  # the inputs to run now
    spec: ModelSpec  # fingerprinted


def _prepare(config: JobConfig) -> _Job:
    """Lists SRC, opens DST (and reads what it holds, on resume), fingerprints the model."""
    items = list_source(config.source)
    store = Store(config.destination, config.output, new_run_id())
    store.open(resume=config.resume)
    done = store.ok_keys() if config.resume else set()
    spec = config.model
    if not spec.fingerprint:
        spec = dataclasses.replace(spec, fingerprint=model_fingerprint(spec.model))
    return _Job(items, store, done, [item for item in items if item.key not in done], spec)


def _run(config: JobConfig, job: _Job) -> None:
    if config.engine == "local":
        engines.run_local(job.pending, job.spec, job.store, batch_size=config.batch_size,
                          max_bytes=config.max_bytes, progress=config.progress)
    else:
        engines.run_ray(job.pending, job.spec, job.store, batch_size=config.batch_size,
                        max_bytes=config.max_bytes, progress=config.progress,
                        options=config.ray)


def model_fingerprint(model: str | os.PathLike[str]) -> str:
    """The model directory's fingerprint (``formats.fingerprint``): rows from different
    models never pass for each other."""
    return formats.fingerprint(model)
