"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class CharlmError(Exception):
    """A problem with the user's input (file, option, checkpoint), stated in one line."""
