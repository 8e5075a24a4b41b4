"""Command-line interface: ``sdeflow --help``."""
