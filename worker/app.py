"""The Celery app and its one task, ``spruce.run_job(job_id)``.

Run one worker process per GPU, each seeing one device:

    CUDA_VISIBLE_DEVICES=0 celery -A spruce.worker.app worker --pool solo --concurrency 1 --loglevel INFO
    CUDA_VISIBLE_DEVICES=1 celery -A spruce.worker.app worker --pool solo --concurrency 1 --loglevel INFO -n gpu1@%h

The solo pool runs the job in the worker process itself: one job at a time, CUDA initialised in
the process that uses it (no fork after CUDA), and SIGTERM waits for the job between layers.
Configuration (broker, queue, limits) comes from ``SPRUCE_*`` settings; see common/queue.py for
why each Celery setting is set.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_ready, worker_shutdown

from spruce.common.queue import TASK_NAME, celery_config
from spruce.common.settings import get_settings
from spruce.worker import observability  # noqa: F401  (connects the logging signals: JSON, job ids)

log = logging.getLogger(__name__)

celery_app = Celery("spruce")
# A promise: settings are read when Celery first needs its configuration, not at import.
celery_app.add_defaults(lambda: celery_config(get_settings()))


@worker_init.connect
def _lower_priority(**_: Any) -> None:
    # First of the worker_init handlers: the engine's import below already runs at this priority.
    os.nice(get_settings().worker_nice)


@worker_init.connect
def _preload_engine(**_: Any) -> None:
    # Import torch and the engine before taking the first message, so that a job's first seconds
    # (and its ETA) measure work, not imports. A dry-run worker never needs them.
    if not get_settings().dry_run:
        import spruce.core.compress  # noqa: F401
    # Progress bars are for terminals: in a worker's log they are carriage-return noise.
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


@worker_init.connect
def _watch_parent(**_: Any) -> None:
    # Under `spruce serve`, die with serve (worker/supervised.py); elsewhere this does nothing.
    from spruce.worker.supervised import watch_parent

    watch_parent()


_alive: list[Any] = []  # the process's beat for `python -m spruce.worker.healthcheck`, once ready


@worker_ready.connect
def _start_alive(**_: Any) -> None:
    from spruce.worker.healthcheck import AliveFile

    _alive.append(AliveFile.for_this_process().start())


@worker_shutdown.connect
def _stop_alive(**_: Any) -> None:
    while _alive:
        _alive.pop().stop()


_sweeper: list[Any] = []  # the process's Sweeper, once the worker is ready


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    # Every worker process sweeps for jobs whose worker died (worker/liveness.py says why here and
    # not in celery beat): it needs nothing else deployed, in either run mode.
    from spruce.worker.liveness import start_sweeper

    settings = get_settings()
    _sweeper.append(start_sweeper(settings, name="spruce-sweeper"))
    from spruce.common.retention import HousekeepingLoop  # deletions and retention, on the same terms

    _sweeper.append(HousekeepingLoop(settings).start())


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    while _sweeper:
        _sweeper.pop().stop()


@celery_app.task(
    name=TASK_NAME,  # the API sends by this name; it never imports this module
    bind=True,
    acks_late=True,  # redeliver if the worker dies mid-job (the job is idempotent by id)
    reject_on_worker_lost=True,
    ignore_result=True,  # the job row holds the outcome
    max_retries=None,  # retries are counted against SPRUCE_MAX_RETRIES by the runner, see below
)
def run_job(self: Task, job_id: str) -> str:
    """A turn for a queued job: run the one the fair scheduler picks (worker/claim.py; ``job_id``
    when its worker died); the row records every outcome.

    User errors fail the job at once, a cancel ends it as cancelled, and system faults are
    retried with exponential backoff up to ``max_retries`` times (counted on the job's row)
    before the job is failed.
    """
    from spruce.worker.runner import RetryLater, run

    settings = get_settings()
    try:
        return run(job_id, settings, worker=self.request.hostname)
    except RetryLater as later:
        # A backoff (the runner put the row back to queued with the reason), or jobs that cannot
        # start yet: the message comes back after the countdown. The row counts the retries.
        raise self.retry(countdown=later.delay, max_retries=None) from later.cause
    except SoftTimeLimitExceeded:  # only under the prefork pool; the runner handles it, this is a guard
        log.error("job %s hit the soft time limit outside the engine", job_id)
        return "failed"
