# pgvision preamble: put the runtime folder on sys.path once per backend.
import sys
if "pgvision_runtime.sqlapi" not in sys.modules:
    import glob, os, site
    _root = plpy.execute("SELECT pg_catalog.current_setting('pgvision.runtime_path', true) AS p")[0]["p"]
    _root = _root or "@RUNTIME_PATH@"
    _site = glob.glob(os.path.join(_root, "venv", "lib", "python%d.%d" % sys.version_info[:2],
                                   "site-packages"))
    if not _site:
        plpy.error('pgvision runtime not found in "%s"' % _root,
                   hint="run make install, or set pgvision.runtime_path in postgresql.conf",
                   sqlstate="58P01")
    # Any role can SET a custom GUC, and this folder decides which code the server runs:
    # load only from folders that the root or the server's own user owns and nobody else
    # can write, as ssh and sudo do with their files.
    for _p in (_root, _site[0], os.path.join(_site[0], "pgvision_runtime")):
        _st = os.stat(_p)
        if _st.st_uid not in (0, os.geteuid()) or _st.st_mode & 0o022:
            plpy.error('pgvision runtime folder "%s" is not owned by root or is writable by others' % _p,
                       hint="install the runtime with make install, or fix the folder's owner and mode",
                       sqlstate="42501")
    # Keep the user's and the system's site-packages from shadowing the pinned runtime.
    sys.path[:] = [p for p in sys.path if "-packages" not in p]
    _before = list(sys.path)
    site.addsitedir(_site[0])
    sys.path[:] = [p for p in sys.path if p not in _before] + _before
    # numpy's OpenBLAS starts a thread per core at import, which takes half of numpy's
    # import time, and pgvision does no linear algebra; the postmaster's environment wins
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import pgvision_runtime.sqlapi
    GD["pgvision_runtime_path"] = _root
from pgvision_runtime import sqlapi as pv
