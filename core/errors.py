"""Exceptions of the translation domain, each with its HTTP status.

Front ends map every ``ServiceError`` to one JSON body with ``status``; workers
raise the same classes so a failed task can be mapped back by class name.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of every error the service reports to a client."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """A request field is missing, mistyped or out of range."""

    status = 400
    code = "invalid_request"


class UnsupportedLanguagePair(ServiceError):
    """No checkpoint serves the requested source and target languages."""

    status = 400
    code = "unsupported_language_pair"


class InputTooLarge(ServiceError):
    """A text, batch or body is over a configured limit."""

    status = 413
    code = "input_too_large"


class ModelNotAvailable(ServiceError):
    """The checkpoint for a pair is neither on disk nor downloadable."""

    status = 503
    code = "model_not_available"


class BackendUnavailable(ServiceError):
    """Redis, the broker or the workers cannot be reached."""

    status = 503
    code = "backend_unavailable"
    retry_after = 5


class QueueFull(BackendUnavailable):
    """The bulk queue is deeper than ``MAX_BULK_QUEUE``; new jobs must wait."""

    code = "queue_full"
    retry_after = 30


class JobNotFound(ServiceError):
    """No job with this id was ever submitted."""

    status = 404
    code = "job_not_found"


class JobExpired(ServiceError):
    """The job existed, but its result has expired."""

    status = 410
    code = "job_expired"


class JobLost(JobExpired):
    """Redis lost the records of a job before it finished.

    This happens when Redis restarts without persistence. The job can never
    complete, so its texts must be submitted again.
    """

    code = "job_lost"


class DeadlineExceeded(ServiceError):
    """A synchronous request did not finish within its deadline."""

    status = 504
    code = "deadline_exceeded"

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


class TranslationFailed(ServiceError):
    """A worker raised while translating."""

    status = 500
    code = "translation_failed"


ERRORS_BY_NAME: dict[str, type[ServiceError]] = {
    cls.__name__: cls
    for cls in (
        InvalidRequest,
        UnsupportedLanguagePair,
        InputTooLarge,
        ModelNotAvailable,
        BackendUnavailable,
        QueueFull,
        JobNotFound,
        JobExpired,
        TranslationFailed,
    )
}


class JobCancelled(ServiceError):
    """The job was cancelled before this part of it ran."""

    status = 409
    code = "job_cancelled"


class JobFinished(ServiceError):
    """The job already finished, so it cannot be cancelled."""

    status = 409
    code = "job_finished"


ERRORS_BY_NAME[JobCancelled.__name__] = JobCancelled
