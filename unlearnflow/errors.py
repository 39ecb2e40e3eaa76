"""Errors a person can act on: each names the bad value and the valid choices."""


class UnlearnflowError(Exception):
    """Base class for errors raised by unlearnflow."""


class ConfigError(UnlearnflowError, ValueError):
    """params.yaml (or a CLI flag) holds a value that cannot work."""


class DatasetUnavailable(UnlearnflowError, RuntimeError):
    """A dataset could not be loaded (e.g. it needs a download and we are offline)."""


def choices_error(what: str, value, choices) -> ConfigError:
    """A ConfigError for an unknown name, listing the valid names."""
    listed = ", ".join(repr(c) for c in sorted(choices))
    return ConfigError(f"unknown {what} {value!r}; valid choices: {listed}")


class PrivateDetailError(UnlearnflowError):
    """An error whose useful detail is personal data (a file name): ``str(e)`` leaves it out, so
    logs (Prefect's included) never hold it; ``local_detail`` holds it for the user's terminal only."""

    def __init__(self, message: str, local_detail: str = ""):
        super().__init__(message)
        self.local_detail = local_detail
