"""Runtime of pgvision's PL/Python functions.

Everything a SQL function does lives here so that it can be imported and tested without
PostgreSQL; the PL/Python bodies only pass ``plpy`` and ``GD`` in (see ``sqlapi``).
"""

__version__ = "0.2.0"
