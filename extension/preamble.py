# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import os, site, stat
    # raised as pgvision's other errors are: "pgvision: ..." with a SQLSTATE and a hint
    _Error = type("pgvision", (plpy.Error,), {"__module__": "builtins"})

    def _fail(message, sqlstate, hint, detail=None):
        e = _Error(message)
        e.sqlstate, e.hint = sqlstate, hint
        if detail:
            e.detail = detail
        raise e
    # Loading pgvision.so defines the settings (src/settings.c): a superuser-only one that a
    # role set before is then dropped, and the runtime reads checked values.
    if plpy.execute("SELECT pg_catalog.to_regprocedure('pgvision._load()') IS NOT NULL AS x")[0]["x"]:
        plpy.execute("SELECT pgvision._load()")
    # The folder decides which code the server runs: only the administrator's own sources
    # count (a placeholder, which any role can SET, is not in pg_settings).
    _rows = plpy.execute("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'pgvision.runtime_path'"
                         " AND source IN ('default', 'configuration file', 'command line', 'environment variable')")
    _given = _rows[0]["setting"] if _rows else "@RUNTIME_PATH@"
    # Resolved once, and every folder from / down checked: nobody but root or the server's
    # user can then swap any part of what is imported later (links are resolved here, not
    # at import time), as ssh and sudo check their files.
    _root = os.path.realpath(_given)
    _site = os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    _parts = [_p for _p in _site.split("/") if _p]
    for _i in range(len(_parts) + 2):
        _p = "/" + "/".join(_parts[:_i]) if _i <= len(_parts) else os.path.join(_site, "pgvision_runtime")
        try:
            _st = os.lstat(_p)
        except OSError as _e:
            _fail('runtime not found in "%s": %s' % (_given, _e.strerror.lower()), "58P01",
                  "run make install, or set pgvision.runtime_path in postgresql.conf",
                  detail='no folder "%s"' % _p)
        if (not stat.S_ISDIR(_st.st_mode) or _st.st_uid not in (0, os.geteuid())
                or _st.st_mode & 0o022):
            _fail('runtime folder "%s" is not a folder owned by root or the server\'s user and closed '
                  'to writes by others' % _p, "42501",
                  "install the runtime with make install, or fix the folder's owner and mode")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site)
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
