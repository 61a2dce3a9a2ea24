"""Batches and huge images on dask: one task per field, or per tile of a huge field.

``kaizen segment ... --scheduler threads|processes|tcp://HOST:PORT`` lands here (and so
does a run whose image is too large for memory, or whose output is ``.zarr``):

* ``threads`` / ``processes``: a ``dask.distributed.LocalCluster`` on this machine
  (one worker with a thread per core / one single-threaded worker process per core);
* ``tcp://HOST:PORT``: joins a running cluster (``dask scheduler`` and ``dask worker
  tcp://HOST:PORT`` on each machine, each with napari-kaizen installed; the workers
  read the input and write the output paths themselves, so those must be on storage
  every machine sees).

This module only runs jobs (:class:`napari_kaizen.jobs.SegmentJob`, built and checked
by the front end): ordinary fields are one task each (:func:`napari_kaizen.jobs.run_job`:
the same steps, files and messages as the plain run); a huge field is planned once here
and its tiles are tasks (:func:`napari_kaizen.tiled.iter_tile_labels`) whose labels come
back to be stitched in raster order, so the labels are identical to a run without a
cluster. The progress bar counts finished futures; Ctrl-C cancels every task the cluster
still holds, and ``--skip-existing`` resumes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import KaizenError, quiet_loggers
from .jobs import JobResult, SegmentJob, progress_bar, run_job

SCHEDULERS = ("threads", "processes", "tcp://HOST:PORT")

#: Seconds to wait for a ``tcp://`` scheduler to answer.
CONNECT_TIMEOUT_S = 10


# --------------------------------------------------------------------------- scheduler


def check_scheduler(text: str | None) -> str | None:
    """Validate ``--scheduler``; return it normalised.

    Raises
    ------
    KaizenError
        Anything but ``threads``, ``processes`` or ``tcp://HOST:PORT``.
    """
    if text is None:
        return None
    value = text.strip()
    if value.lower() in ("threads", "processes"):
        return value.lower()
    if value.startswith("tcp://"):
        host, _, port = value[len("tcp://"):].rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise KaizenError(f"--scheduler '{text}' is not understood: give threads, processes or tcp://HOST:PORT "
                      "(a running `dask scheduler`)")


@contextlib.contextmanager
def dask_client(scheduler: str, *, n_workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (closed, with its local cluster, on exit)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise KaizenError("--scheduler needs dask.distributed: pip install distributed") from None
    cores = n_workers or os.cpu_count() or 1
    if scheduler.startswith("tcp://"):
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise KaizenError(f"cannot reach the dask scheduler at {scheduler} ({exc.__class__.__name__}): start one "
                              "with `dask scheduler` and workers with `dask worker " + scheduler + "`") from None
        try:
            yield client
        finally:
            client.close()
        return
    processes = scheduler == "processes"
    cluster = LocalCluster(n_workers=cores if processes else 1, threads_per_worker=1 if processes else cores,
                           processes=processes, dashboard_address=None)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def iter_as_completed(client: Any, futures: list[Any]) -> Iterator[Any]:
    """Yield finished futures as they complete; cancel the rest on Ctrl-C or when closed."""
    from distributed import as_completed

    try:
        yield from as_completed(futures)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending, force=True)


# --------------------------------------------------------------------------- running jobs


def run_jobs(jobs: Sequence[SegmentJob], *, scheduler: str | None = None, progress: bool = True
             ) -> Iterator[tuple[SegmentJob, JobResult | Exception]]:
    """Run jobs, here or on a dask scheduler; yield ``(job, result or the error it raised)``.

    Ordinary fields go first (on a scheduler: one task each, yielded as they finish);
    then each tiled field, planned here, its tiles tasks on the scheduler. An error of
    one job (a :class:`~napari_kaizen.errors.KaizenError` or an ``OSError``) is
    yielded, not raised, so the other jobs still run.

    Parameters
    ----------
    jobs : sequence of SegmentJob
    scheduler : str, optional
        ``'threads'``, ``'processes'`` or ``'tcp://HOST:PORT'`` (:func:`check_scheduler`).
    progress : bool
        Progress bars on stderr.
    """
    scheduler = check_scheduler(scheduler)
    if not scheduler:
        yield from _run_jobs(jobs, None, None, progress)
        return
    with contextlib.suppress(ImportError):
        import distributed  # noqa: F401 (its logging config first, so the quiet levels below win)
    with _quiet_distributed():
        try:
            yield from _run_jobs(jobs, scheduler, None, progress)
        except Exception as exc:  # noqa: BLE001 (only the scheduler's loss is translated; the rest re-raised)
            if not _scheduler_lost(exc):
                raise
            raise KaizenError(f"the dask scheduler {scheduler} stopped during the run ({_lost_reason(exc)}); images "
                              "finished before it are kept: start it again and rerun with --skip-existing to "
                              "resume") from None


def _quiet_distributed() -> contextlib.AbstractContextManager[None]:
    """Keep dask.distributed's own log lines (reconnect attempts, a closing connection pool)
    off the terminal: what a person needs is said once, by the run, in our words."""
    import logging

    # dask's logging config gives child loggers (distributed.client, .core, ...) their own
    # levels, so each is raised, not only the parent.
    names = ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]
    return quiet_loggers(*names, level=logging.CRITICAL + 1)


def _scheduler_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is how dask.distributed reports a scheduler (or the connection to it) gone."""
    from concurrent.futures import CancelledError

    try:
        from distributed.comm.core import CommClosedError
    except ImportError:  # pragma: no cover
        CommClosedError = OSError  # noqa: N806
    if isinstance(exc, (CancelledError, CommClosedError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, OSError, TimeoutError)) and any(
        w in text for w in ("connectionpool closing", "connection lost", "scheduler-connection-lost",
                            "client is closed", "not running", "stream is closed"))


def _lost_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{exc.__class__.__name__}: {reason}" if reason else exc.__class__.__name__


def _run_jobs(jobs: Sequence[SegmentJob], scheduler: str | None, _unused: Any, progress: bool
              ) -> Iterator[tuple[SegmentJob, JobResult | Exception]]:
    fields = [j for j in jobs if not j.tiled]
    huge = [j for j in jobs if j.tiled]
    with (dask_client(scheduler) if scheduler else contextlib.nullcontext()) as client:
        if fields and client is not None:
            futures = [client.submit(run_job, job, pure=False, key=f"kaizen-field-{k}-{os.getpid()}-{time.monotonic_ns()}")
                       for k, job in enumerate(fields)]
            owner = {f.key: job for f, job in zip(futures, fields)}
            with progress_bar(len(futures), f"{len(futures)} fields on {scheduler}", progress) as bar:
                for f in iter_as_completed(client, futures):
                    bar.update(1)
                    try:
                        result: JobResult | Exception = f.result()
                    except (KaizenError, OSError) as exc:
                        if _scheduler_lost(exc):
                            raise
                        result = exc
                    bar.clear()
                    yield owner[f.key], result
        else:
            for job in fields:
                yield job, _attempt(job, progress, None)
        for job in huge:
            yield job, _attempt(job, progress, client)


def _attempt(job: SegmentJob, progress: bool, client: Any) -> JobResult | Exception:
    try:
        return run_job(job, progress=progress, client=client)
    except (KaizenError, OSError) as exc:
        if client is not None and _scheduler_lost(exc):
            raise
        return exc


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `kaizen segment ... --scheduler ...`")
