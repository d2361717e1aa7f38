"""Per-level caches of meshes and tables, and a scope that keeps only what existed before it.

Meshes and numpy tables are cached so that repeated calls are free. A network needs them only while it
is built: its layers keep their own int32 torch copies, shared between layers. Building inside
:func:`transient` drops on exit every entry the build added (about 45 MB at level 7: the float64 meshes
and the int64 tables of all levels), while entries that existed before stay cached.
"""
from __future__ import annotations

import contextlib
import functools

# One list per open scope: the (store, key) pairs added while it was open.
_scopes: list[list] = []


def level_cache(function):
    """Cache ``function(*args)`` by its (hashable) arguments, like ``functools.cache``; entries added
    inside :func:`transient` are dropped when it closes. ``.cache_clear()`` empties the cache."""
    store: dict = {}

    @functools.wraps(function)
    def cached(*args):
        try:
            return store[args]
        except KeyError:
            pass
        value = function(*args)
        store[args] = value
        if _scopes:
            _scopes[-1].append((store, args))
        return value

    cached.cache_clear = store.clear
    cached.cache_contains = lambda *args: args in store
    return cached


@contextlib.contextmanager
def transient():
    """Drop, on exit, the cache entries computed inside (an enclosing scope takes them over instead)."""
    added: list = []
    _scopes.append(added)
    try:
        yield
    finally:
        _scopes.pop()
        if _scopes:
            _scopes[-1].extend(added)
        else:
            for store, key in added:
                store.pop(key, None)
