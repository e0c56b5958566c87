"""The `meshcp` command line: argument parsing, the commands, and the one-shot offline work
behind `compile` and `bootstrap`."""
