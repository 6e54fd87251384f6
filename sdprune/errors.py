"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class SdpruneError(Exception):
    """Bad input or an unusable file: the message is shown to the user as one line."""
