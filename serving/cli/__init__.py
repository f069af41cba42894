"""The ``hbdnet`` command line: the entry point and the subcommands that run the engine."""
