"""The package version, in a module of its own: the weights writer and the CLI read it
without importing the package's ``__init__`` (and with it the public API above them)."""

__version__ = "0.1.0"
