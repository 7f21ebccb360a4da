"""The pipelines' own user-facing error type, and the one list of every project error meant for the user."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user asked for (bad option, unusable folder); printed as one line."""


def user_error_types() -> tuple[type[Exception], ...]:
    """Every project error type whose message is meant for the user: `kpr` prints it in one line, the web app as a 4xx.

    Imported on the call, so that importing this module (every `kpr` command does) stays cheap.
    """
    from kpr_model.config import KPRModelError
    from storage import StoreError
    from training.datasets import DatasetError
    from training.train_config import TrainConfigError
    from workers.errors import WorkerError

    return (UserError, KPRModelError, StoreError, DatasetError, TrainConfigError, WorkerError)
