"""The one exception the stage scripts turn into a short message and a non-zero exit."""


class PatchDropError(Exception):
    """A problem with the user's input (data, flags, checkpoints) that a traceback would not explain.

    The message says what is wrong and what to do; scripts print it to stderr and exit with status 1.
    """


def error_line(err: BaseException) -> str:
    """The user's message of ``err``. A PatchDropError raised in a DataLoader worker reaches the main
    process re-raised with the worker's traceback in its text; only its last line is the message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        for prefix in (f"{PatchDropError.__module__}.{PatchDropError.__name__}: ", "PatchDropError: "):
            text = text.removeprefix(prefix)
    return text
