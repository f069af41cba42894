"""The model library's subcommands (plan, convert, train); the ``hbdnet`` entry point is ``serving.cli.main``."""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
