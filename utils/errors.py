"""The one exception the stage scripts turn into a short message and a non-zero exit."""


class PatchDropError(Exception):
    """A problem with the user's input (data, flags, checkpoints) that a traceback would not explain.

    The message says what is wrong and what to do; scripts print it to stderr and exit with status 1.
    """
