"""The models a backend has loaded, and where each one's session comes from.

A model is read from the registry and turned into an onnxruntime session once per backend,
then kept, keyed by (sha256, spec text, threads). The spec is part of the key: two
registrations of the same ONNX bytes with other preprocessing or outputs are two models
(they share one shared copy, which depends on the bytes alone).

On a miss this module decides where the session comes from; ``models`` only runs sessions
and ``sharing`` only keeps files:

- shared (pgvision.share_models on): the server's copy of the model (sharing.py), whose
  weights every backend maps from one file; the first backend writes it from the
  registry's bytes, which later ones do not read at all;
- private: a session of the registry's bytes, this backend's own. A shared model falls
  back to one whenever the shared copy cannot be used, and the reason goes to the store's
  log.

The registry is read through a *source* (sqlapi.Registered): ``sha256`` and ``spec_text``
make the key, ``spec()`` gives the validated spec and ``onnx()`` the checked bytes; both
are called only on a miss, ``onnx()`` only when the bytes are needed.
"""

from . import models, sharing


class Cache:
    """Loaded models of one backend; ``store`` is a sharing.SharedModels, or None."""

    def __init__(self, store=None):
        self.store = store
        self.models = {}  # (sha256, spec text, threads) -> models.Model
        self._shared = {}  # the same keys -> whether the model was asked for shared

    def get(self, source, threads, share=True):
        """The model ``source`` names, opened with ``threads`` onnxruntime threads."""
        key = (source.sha256, source.spec_text, threads)
        share = bool(share) and self.store is not None
        model = self.models.get(key)
        if model is not None and self._shared[key] == share:
            return model
        # another thread count or sharing setting for the same model replaces the old
        # session, which goes first so that its memory is free for the new one
        model = None
        for old in [k for k in self.models if k[:2] == key[:2]]:
            del self.models[old], self._shared[old]
        spec = source.spec()
        if share:
            model = open_shared(self.store, source, spec, threads)
        else:
            model = models.Model(source.onnx(), spec, threads)
        self.models[key], self._shared[key] = model, share
        models.release_free_memory()
        return model

    def release_memory(self):
        """Give back the activation memory every loaded model keeps; returns how many."""
        for model in self.models.values():
            model.release_memory()
        return len(self.models)


def open_shared(store, source, spec, threads):
    """The model opened from its shared copy in ``store``, written first if there is none;
    a private session of the registry's bytes if the copy cannot be used."""
    sha = source.sha256
    try:
        path = store.find(sha)
        if path is not None:
            return models.Model(path, spec, threads, shared=True)
    except (sharing.Unusable, OSError) as e:
        store.log(f"pgvision: shared copy of model {sha[:12]} not used: {e}")
    return _write_shared(store, source, spec, threads)


def _write_shared(store, source, spec, threads):
    """Write the shared copy from the registry's bytes; returns the model, shared if possible."""
    sha, onnx_bytes = source.sha256, source.onnx()
    try:
        draft = store.draft(sha, onnx_bytes)
    except (sharing.Unusable, OSError) as e:
        store.log(f"pgvision: cannot write a shared copy of model {sha[:12]}: {e}")
        return models.Model(onnx_bytes, spec, threads)
    try:
        # ModelError (onnxruntime cannot load it) is the user's error: raised as without sharing
        private = models.Model(onnx_bytes, spec, threads, save_to=draft.graph)
    except BaseException:
        draft.discard()
        raise
    del onnx_bytes
    try:
        return models.Model(draft.publish(), spec, threads, shared=True)
    except Exception as e:  # the private session works: keep it
        draft.discard()
        store.log(f"pgvision: cannot share model {sha[:12]}: {e}")
        return private
