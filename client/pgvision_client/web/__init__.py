"""`pgvision serve`: a search page over tables of images (pgvision_client.web.app)."""

from .app import create_app, serve  # noqa: F401
