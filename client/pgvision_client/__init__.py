"""pgvision command-line client: load images into a table, search by image, run the demo."""

__version__ = "0.2.0"
