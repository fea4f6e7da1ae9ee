"""Runtime of pgvision's PL/Python functions.

Everything a SQL function does lives here so that it can be imported and tested without
PostgreSQL; the PL/Python bodies only pass ``plpy`` and ``GD`` in (see ``sqlapi``).
"""

from ._version import __version__  # noqa: F401  (written by make from extension/pgvision.control)
