# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _rows = plpy.execute("SELECT setting, source FROM pg_catalog.pg_settings "
                         "WHERE name = 'pgvision.runtime_path'")
    if _rows and _rows[0]["source"] not in ("default", "configuration file", "command line",
                                             "environment variable", "override"):
        # The runtime folder decides which code the server runs: only the server
        # configuration (postgresql.conf, ALTER SYSTEM) may change it.
        plpy.error("pgvision.runtime_path can only be set in the server configuration",
                   hint="use ALTER SYSTEM SET pgvision.runtime_path or postgresql.conf, then reload",
                   sqlstate="42501")
    _root = _rows[0]["setting"] if _rows and _rows[0]["setting"] else "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
