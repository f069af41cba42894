"""Subcommands of the ``hbdnet`` CLI, one module each."""
