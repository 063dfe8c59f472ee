"""The one exception type for bad input data, so that commands can report it without a trace."""


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""
