"""The ``status`` subcommand."""
