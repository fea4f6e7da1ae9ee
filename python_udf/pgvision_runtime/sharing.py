"""One copy of each model's weights for all the backends of a server, through a file mapping.

Loaded from the registry's bytes, every backend holds its own copy of a model's weights
(and of onnxruntime's reordered and prepacked forms of them), so memory grows by that much
with every connection. Instead, the first backend that loads a model asks onnxruntime to
save the model as it runs it (optimized, weights reordered and prepacked) with the weights
in a file of their own. onnxruntime maps such a file into memory read-only instead of
reading it, so every backend that opens the copy uses the same pages of the page cache.

The copies live in the data directory (a backend's working directory), in a folder whose
name starts with ``pgsql_tmp``, which base backups leave out, as PostgreSQL documents for
such names; the folder can be deleted at any time. This module keeps the files; a copy is
used only if everything checks out, otherwise the backend loads the model from the
registry's bytes as without sharing:

- the folders and files are owned by the server's user, and nobody else can read or
  write them; files are regular files with a single link, opened without following links;
- a copy is written into a private temporary folder, flushed, and renamed into place in
  one step, so no backend ever sees half of one;
- the manifest names the registry's sha256 (the source bytes are hashed before the copy
  is written), the onnxruntime version and the CPU it was optimized for (the reordered
  weights depend on the CPU's vector width), and the sha256 and size of each file, which
  are checked on every load, before onnxruntime opens the files.
"""

import hashlib
import json
import os
import shutil
import stat
import time
import uuid

FORMAT = 2  # 2: written only from bytes that passed models.check_graph
FOLDER = "pgsql_tmp_pgvision_models"
GRAPH, WEIGHTS, MANIFEST = "model.onnx", "model.weights", "manifest.json"
STALE_SECONDS = 3600  # a temporary folder this old was left by a backend that died


class Unusable(Exception):
    """The shared copy cannot be used; the reason goes to the server log at DEBUG1."""


def _cpu():
    """What the optimized graph depends on: the CPU's make and instruction set extensions."""
    keep = ("vendor_id", "model name", "flags")
    found = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in keep and key not in found:
                found[key] = value.strip()
            if len(found) == len(keep):
                break
    if "flags" not in found:
        raise Unusable("cannot read the CPU's flags from /proc/cpuinfo")
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()


def variant():
    """What a copy depends on besides the model: format, onnxruntime, CPU, optimization."""
    import onnxruntime

    from . import models
    return {"format": FORMAT, "onnxruntime": onnxruntime.__version__, "cpu": _cpu(),
            "optimization": models.OPTIMIZATION}


def _private_dir(path):
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise Unusable(f'"{path}" is not a folder of the server\'s user closed to others')


def _open_private(path):
    """A file descriptor of a regular, single-link file of ours that others cannot touch."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077
                or st.st_nlink != 1):
            raise Unusable(f'"{path}" is not a private regular file of the server\'s user')
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def _hash_file(path):
    fd, size = _open_private(path)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb", buffering=0) as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest(), size


class SharedModels:
    """The shared copies under ``root`` (normally ``$PGDATA/pgsql_tmp_pgvision_models``);
    ``log`` takes the reasons a copy is not used (sqlapi passes plpy.debug)."""

    def __init__(self, root, log=None):
        self.root = root
        self.log = log or (lambda message: None)
        self._variant = None

    def _key(self):
        if self._variant is None:
            v = variant()
            self._variant = v, hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16]
        return self._variant

    def entry(self, sha):
        return os.path.join(self.root, f"{sha}-{self._key()[1]}")

    def find(self, sha):
        """The graph file of a checked copy of model ``sha``, or None if there is none yet.

        Raises Unusable (or OSError) when there is a copy that cannot be used: a broken one
        is set aside first, so that the next ``draft`` writes a new one.
        """
        self._ensure_root()
        return self._verified(sha)

    def draft(self, sha, onnx_bytes):
        """A new copy of model ``sha`` to write from its registry bytes (see Draft).

        Raises Unusable when the bytes are not the model ``sha`` or the folder is not ours,
        OSError when nothing can be written.
        """
        if hashlib.sha256(onnx_bytes).hexdigest() != sha:
            raise Unusable("the model does not match its sha256")
        self._ensure_root()
        self._sweep()
        tmp = os.path.join(self.root, f"tmp-{os.getpid()}-{uuid.uuid4().hex}")
        os.mkdir(tmp, 0o700)
        return Draft(self, sha, tmp)

    # ---------------------------------------------------------------- reading

    def _ensure_root(self):
        try:
            os.mkdir(self.root, 0o700)
        except FileExistsError:
            pass
        _private_dir(self.root)

    def _verified(self, sha):
        """The graph file of a checked copy of ``sha``, or None if there is none yet."""
        folder = self.entry(sha)
        try:
            _private_dir(folder)
        except FileNotFoundError:
            return None
        try:
            fd, size = _open_private(os.path.join(folder, MANIFEST))
            with os.fdopen(fd, "rb") as f:
                manifest = json.loads(f.read(1 << 16))
            if (not isinstance(manifest, dict) or manifest.get("source_sha256") != sha
                    or manifest.get("variant") != self._key()[0]):
                raise Unusable("its manifest is for another model or another build")
            files = manifest.get("files")
            if not isinstance(files, dict) or set(files) != {GRAPH, WEIGHTS}:
                raise Unusable("its manifest does not list the expected files")
            for name, expected in files.items():
                digest, size = _hash_file(os.path.join(folder, name))
                if expected != {"sha256": digest, "size": size}:
                    raise Unusable(f"{name} does not match the sha256 in its manifest")
        except (Unusable, OSError, ValueError) as e:
            # broken (a crash between write and flush, a disk error, a hand edit): set aside
            # so that the next load writes a new one
            self._discard(folder)
            raise Unusable(str(e)) from None
        return os.path.join(folder, GRAPH)

    # ---------------------------------------------------------------- writing

    def _discard(self, folder):
        trash = os.path.join(self.root, f"tmp-{os.getpid()}-{uuid.uuid4().hex}")
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep(self):
        """Remove temporary folders left behind by backends that died while writing."""
        now = time.time()
        for name in os.listdir(self.root):
            if name.startswith("tmp-"):
                path = os.path.join(self.root, name)
                try:
                    if now - os.lstat(path).st_mtime > STALE_SECONDS:
                        shutil.rmtree(path, ignore_errors=True)
                except OSError:
                    pass

    def _forget_other_variants(self, sha):
        """Copies of the same model for an older onnxruntime or another CPU are dead weight."""
        keep = os.path.basename(self.entry(sha))
        for name in os.listdir(self.root):
            if name.startswith(sha + "-") and name != keep:
                self._discard(os.path.join(self.root, name))

    @staticmethod
    def _fsync_dir(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Draft:
    """A copy being written, in a private temporary folder of the store.

    onnxruntime saves the model into ``graph`` (models.session_options' ``save_to``), with
    its weights beside it; ``publish`` then flushes the files, writes the manifest and
    renames the folder into place in one step. ``discard`` removes what is left of it.
    """

    def __init__(self, store, sha, folder):
        self.store, self.sha, self.folder = store, sha, folder
        self.graph = os.path.join(folder, GRAPH)

    def publish(self):
        """Put the copy in place; returns its graph file, another backend's if it was first."""
        store, tmp = self.store, self.folder
        files = {}
        if not os.path.exists(os.path.join(tmp, WEIGHTS)):
            # a model without any weight large enough to leave the graph: all of it is there
            os.close(os.open(os.path.join(tmp, WEIGHTS), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for name in (GRAPH, WEIGHTS):
            path = os.path.join(tmp, name)
            os.chmod(path, 0o600)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
            digest, size = _hash_file(path)
            files[name] = {"sha256": digest, "size": size}
        manifest = {"source_sha256": self.sha, "variant": store._key()[0], "files": files,
                    "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        fd = os.open(os.path.join(tmp, MANIFEST), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        folder = store.entry(self.sha)
        try:
            os.rename(tmp, folder)
            path = os.path.join(folder, GRAPH)
        except OSError:
            # another backend was first (rename does not replace a non-empty folder)
            self.discard()
            path = store._verified(self.sha)
            if path is None:
                raise Unusable("it went away as soon as it was written") from None
        store._fsync_dir(store.root)
        store._forget_other_variants(self.sha)
        return path

    def discard(self):
        shutil.rmtree(self.folder, ignore_errors=True)
