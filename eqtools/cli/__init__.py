"""The ``eqtools`` command line: one small module per subcommand."""
