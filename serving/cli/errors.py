"""The error every ``hbdnet`` subcommand raises for its user: one line and an exit code."""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
