"""The one exception type of the conversion package."""


class ConversionError(ValueError):
    """A checkpoint cannot be converted as asked; the message names the file, key or argument at fault."""
