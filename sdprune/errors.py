"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class SdpruneError(Exception):
    """Bad input or an unusable file: the message is shown to the user as one line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what to do next (the CLI shows the message after "interrupted")."""
