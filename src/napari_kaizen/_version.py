"""The package version, in a module of its own: the weights writer and the CLI read it
without importing the package's ``__init__`` (and with it the public API above them).
The one place the version is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``)."""

__version__ = "0.2.0"
