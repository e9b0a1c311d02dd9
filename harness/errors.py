"""User-facing errors: one line, naming the option or file and what was expected."""


class UserError(Exception):
    """An error caused by the user's input (an option, a file, a name).

    The CLI prints ``str(err)`` on one line and exits with status 2; it never shows a
    traceback for these.
    """
