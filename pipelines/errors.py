"""The pipelines' own user-facing error type, and the one list of every project error meant for the user."""
from __future__ import annotations

import importlib
import sys

# Every project error type whose message is meant for the user, as (module, name): `kpr` prints it in one line,
# the web app answers it as a 4xx.
_USER_ERRORS = (("pipelines.errors", "UserError"), ("kpr_model.config", "KPRModelError"), ("storage", "StoreError"),
                ("training.datasets", "DatasetError"), ("training.run_settings", "TrainConfigError"),
                ("workers.errors", "WorkerError"))


class UserError(Exception):
    """A mistake in what the user asked for (bad option, unusable folder); printed as one line."""


def user_error_types() -> tuple[type[Exception], ...]:
    """Every project error type whose message is meant for the user (their modules imported on the call, so that
    importing this module, as every `kpr` command does, stays cheap)."""
    return tuple(getattr(importlib.import_module(module), name) for module, name in _USER_ERRORS)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is of one of user_error_types, looking only in modules already imported (an error of a module
    not imported yet cannot have been raised): a mistake found before PyTorch or LanceDB load is answered without
    loading them."""
    loaded = tuple(getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules)
    return isinstance(exc, loaded)
