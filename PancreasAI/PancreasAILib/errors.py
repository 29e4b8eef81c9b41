"""Exceptions whose message a radiologist or a script author can act on."""


class PancreasAIError(Exception):
    """A problem with the user's input, model or environment; the message says what to do."""


class InputError(PancreasAIError):
    """The image or region given cannot be processed as it is."""


class ModelFileError(PancreasAIError):
    """A weights file or model card is missing, corrupt or of the wrong architecture."""


class MissingDependencyError(PancreasAIError):
    """A Python package the operation needs is not installed."""


class OperationCancelled(Exception):
    """The user cancelled; whatever was started has been undone."""


class OutputError(PancreasAIError):
    """The results could not be written completely (full disk, unwritable folder, a clash with
    another run); nothing partial was left."""
