"""Log lines about tasks: a failure with id, queue, attempt n/max and traceback; a finish."""

from __future__ import annotations

import logging

from apalis_client.events import TaskRef

__all__ = ["log_failure", "log_finished"]

log = logging.getLogger("apalis_client.worker")


def attempt_text(task: TaskRef) -> str:
    """``attempt n/max`` of the run in progress (the row counts finished attempts)."""
    return f"attempt {task.attempts + 1}/{task.max_attempts}"


def log_failure(
    task: TaskRef,
    exc: BaseException | None,
    message: str,
    *,
    retry_in: float | None,
    logger: logging.Logger = log,
) -> None:
    """Log a failed attempt at ERROR with its traceback (when there is an exception).

    ``retry_in`` is the backoff in seconds when attempts remain, None when this was the
    last one (the task is Killed).
    """
    last = task.attempts + 1 >= task.max_attempts
    then = "no attempts left, killed" if last or retry_in is None else f"retry in {retry_in:.1f}s"
    logger.error(
        "task %s on queue %s failed (%s, %s): %s",
        task.id,
        task.job_type,
        attempt_text(task),
        then,
        message,
        exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
    )


def log_finished(
    task: TaskRef, status: str, duration: float, *, logger: logging.Logger = log
) -> None:
    """One DEBUG line per recorded attempt: id, queue, final status, attempt, run time."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "task %s on queue %s %s (%s) in %.1fms",
            task.id,
            task.job_type,
            status,
            attempt_text(task),
            duration * 1000,
        )
