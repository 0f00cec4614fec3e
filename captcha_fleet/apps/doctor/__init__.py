"""The ``doctor`` subcommand."""
