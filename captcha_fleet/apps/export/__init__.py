"""The ``export`` subcommand."""
