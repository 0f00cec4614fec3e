"""The applications: the ``captcha-fleet`` entry point and the subcommands that are not a service of their own."""
