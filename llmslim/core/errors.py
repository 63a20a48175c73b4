"""Errors a user can cause. The CLI renders each as one line on stderr and exits 1."""


class LlmslimError(Exception):
    """Base class: bad input or an environment problem the user can fix."""


class ModelNotFoundError(LlmslimError):
    pass


class UnsupportedArchitectureError(LlmslimError):
    pass


class DataError(LlmslimError):
    """A data file is missing, malformed or of an unknown format."""


class OutputExistsError(LlmslimError):
    pass


class BadOptionError(LlmslimError):
    pass


class JobStoppedError(LlmslimError):
    """Under torchrun / accelerate launch: another process of the job ended, so the launcher
    stopped this one (or a collective with it failed)."""

    def __init__(self, why: str = "SIGTERM: the launcher stops the other processes when one fails, or the job was cancelled"):
        super().__init__(f"stopped ({why}); no --out was written (the launcher's report names a failed process)")
