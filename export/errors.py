"""The one error type users of the export stage see."""


class ExportError(Exception):
    """A user-facing export failure: the message says what is wrong and what to do."""
