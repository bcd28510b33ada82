"""One module per CLI command (see ``blueprint.cli.COMMANDS``)."""
