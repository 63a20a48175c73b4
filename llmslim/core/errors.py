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
