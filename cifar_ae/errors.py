"""The package's own errors: each message names what is wrong (the file, the field) and the fix."""


class DataError(ValueError):
    """Bad or missing data; the message names the file and the fix."""
