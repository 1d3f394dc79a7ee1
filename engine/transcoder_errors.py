"""The error every transcoder module raises for bad files, shapes, hooks or settings."""


class TranscoderError(ValueError):
    """Transcoder files, shapes, hooks or settings that cannot be used (the message names which)."""
