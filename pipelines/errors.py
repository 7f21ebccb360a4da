"""The pipelines' own user-facing error type."""


class UserError(Exception):
    """A mistake in what the user asked for (bad option, unusable folder); printed as one line."""
