"""The ``replay`` subcommand."""
