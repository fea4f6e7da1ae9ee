"""pgvision command-line client: load images into a table, search by image, run the demo."""

from ._version import __version__  # noqa: F401  (written by make from extension/pgvision.control)
