"""User-facing errors: one line, naming the option or file and what was expected."""


class UserError(Exception):
    """An error caused by the user's input (an option, a file, a name).

    The CLI prints ``str(err)`` on one line and exits with status 2; it never shows a
    traceback for these.
    """


def message(err: UserError) -> str:
    """The one-line message of ``err``. A UserError raised in a DataLoader worker
    process arrives re-raised with the worker's traceback as its text; its message is
    that traceback's last line, after the exception's qualified name."""
    text = str(err)
    if "Traceback (most recent call last)" not in text:
        return text
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.split(".")[-1].endswith("Error") else last
