"""Compiled programs of the native engine kept on disk between processes.

JAX's persistent compilation cache spares XLA's compilation but not the Python tracing
and the lowering to HLO that produce its key: for NUTS (numpyro's warm-up and sampling
loops) those cost about 3 s in every new process. Here the *compiled executable* of a
jitted function is serialised (``jax.experimental.serialize_executable``: the PJRT
executable, as the persistent cache stores it, plus the argument and result tree
structures) to ``<GROWTH_JAX_CACHE_DIR>/native_exec/<name>-<key>.bin``; a later process
loads it and calls it without tracing, lowering or compiling anything. ``prefetch`` starts
such a load in a background thread (XLA releases the GIL while it loads), so that the
sampler loads while the Laplace fit runs.

The stored program is compiled with JAX's persistent cache bypassed (``_fresh_compile``):
an executable JAX took from that cache serialises incompletely on jaxlib 0.10 / CPU (it
loads, then fails to run with "NOT_FOUND: Function <fusion> not found"). As a last line of
defence, callers retry with ``retrace=True`` when a loaded program raises
``jax.errors.JaxRuntimeError``. At most ``MAX_FILES_PER_NAME`` files are kept per program.

The key covers everything the executable depends on: the caller's name and settings, the
abstract arguments (tree structure, shapes, dtypes), the JAX/jaxlib/numpyro versions, the
backend and its devices, the CPU's feature flags (an executable compiled for another CPU
could use instructions this one lacks), JAX's x64 and PRNG settings and a hash of the
native engine's source files. Anything else that goes wrong (missing, truncated or
corrupt file, failed unpickling or loading) falls back to trace + compile, and the new
file replaces the bad one. Files are written to a temporary name in the same directory and
renamed, so concurrent processes never see a partial file (two racing writers write the
same bytes; the last rename wins).

Why not ``jax.export``: its ``serialize()`` needs the ``flatbuffers`` package (not a
dependency of this project), and a deserialised ``Exported`` must still be lowered into
a new module and looked up in the compilation cache in every process (some 0.1-0.3 s
more). The executable loaded here is the very program the tracing process ran, so the
traced and the loaded path give bit-identical results.

Only trusted files: unpickling runs code, as does loading JAX's own compilation cache.
The directory is the user's own cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import platform
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

log = logging.getLogger(__name__)

_MAGIC = b"GAEXEC1\n"
MAX_FILES_PER_NAME = 24  # executables kept per program name (newest first)
_FORMAT = 1
_SOURCES = ("native.py", "native_math.py", "native_export.py")
_memory: dict[str, Any] = {}
_origin: dict[str, str] = {}  # key -> "file" | "traced"
_pending: dict[str, Any] = {}  # key -> Future of a background load (see prefetch)
_pool = None
_lock = threading.Lock()
_env_cache: dict[str, Any] = {}


def exec_cache_dir(base: Path | None) -> Path | None:
    return None if base is None else Path(base) / "native_exec"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(line.split(":", 1)[1].strip().encode()).hexdigest()[:16]
    except OSError:
        pass
    return platform.processor() or "unknown"


@functools.lru_cache(maxsize=None)
def package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


def _source_hash() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _SOURCES:
        try:
            h.update((here / name).read_bytes())
        except OSError:  # pragma: no cover - running from a zip: key on the version only
            h.update(name.encode())
    return h.hexdigest()[:32]


def environment() -> dict[str, Any]:
    """What every key includes: versions, backend, devices, CPU, JAX settings, sources."""
    if not _env_cache:
        import jaxlib

        backend = jax.devices()[0].client
        _env_cache.update({
            "format": _FORMAT,
            "jax": jax.__version__,
            "jaxlib": getattr(jaxlib, "__version__", package_version("jaxlib")),
            "numpyro": package_version("numpyro"),
            "platform": backend.platform,
            "platform_version": str(getattr(backend, "platform_version", "")),
            "devices": [f"{d.platform}:{d.id}:{d.device_kind}" for d in jax.devices()],
            "machine": platform.machine(),
            "cpu": _cpu_flags(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "source": _source_hash(),
        })
    env = dict(_env_cache)
    env["x64"] = bool(jax.config.jax_enable_x64)
    env["prng"] = str(jax.config.jax_default_prng_impl)
    return env


def _signature(args: Any) -> dict[str, Any]:
    leaves, tree = jax.tree.flatten(args)
    return {"tree": str(tree),
            "leaves": [[list(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))]
                       for x in leaves]}


def cache_key(name: str, settings: dict[str, Any], args: Any) -> str:
    blob = json.dumps({"name": name, "settings": settings, "args": _signature(args),
                       "env": environment()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def _read(path: Path, devices) -> Any:
    from jax.experimental import serialize_executable

    raw = path.read_bytes()
    if not raw.startswith(_MAGIC):
        raise ValueError("not a growth_assets executable file")
    digest, body = raw[len(_MAGIC):len(_MAGIC) + 32], raw[len(_MAGIC) + 32:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch (truncated or corrupt file)")
    payload, in_tree, out_tree = pickle.loads(body)
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree,
                                                     execution_devices=list(devices))


def _write(path: Path, compiled) -> None:
    from jax.experimental import serialize_executable

    body = pickle.dumps(serialize_executable.serialize(compiled), protocol=pickle.HIGHEST_PROTOCOL)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; a shared cache must stay readable
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(body).digest() + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file, or none, or the whole new one
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _path(directory: Path | None, name: str, key: str) -> Path | None:
    return None if directory is None else Path(directory) / f"{name}-{key}.bin"


def _executor():
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="growth-exec-load")
    return _pool


def prefetch(name: str, args: Any, *, settings: dict[str, Any], devices,
             directory: Path | None) -> None:
    """Start loading a cached executable in a background thread (XLA loads it without
    holding the GIL), so that it is ready when ``compiled`` asks for it. Does nothing when
    it is in memory already, or there is no file (``compiled`` will trace)."""
    key = cache_key(name, settings, args)
    path = _path(directory, name, key)
    with _lock:
        if key in _memory or key in _pending or path is None or not path.exists():
            return
        _pending[key] = _executor().submit(_read, path, list(devices))


def _prune(directory: Path, name: str, keep: int = MAX_FILES_PER_NAME) -> None:
    """Bound the cache: keep the ``keep`` newest files of ``name`` (every edit of the
    engine's source, new version or new shape makes a new key) and drop temporary files
    that a killed writer left behind more than an hour ago."""
    import time

    try:
        files = sorted(directory.glob(f"{name}-*.bin"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
        for tmp in directory.glob(f"{name}-*.tmp"):
            if time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink(missing_ok=True)
    except OSError:  # another process pruning at the same time, or a read-only cache
        pass


def _fresh_compile(lowered):
    """``lowered.compile()`` without JAX's persistent compilation cache. An executable that
    JAX loaded from that cache serialises incompletely (jaxlib 0.10 on CPU: the file loads,
    then running it fails with "NOT_FOUND: Function <fusion> not found"), so the program
    stored here must come from a real compilation."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    try:
        from jax._src import config as jax_config

        disabled = jax_config.enable_compilation_cache(False)  # this thread only
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other JAX
        import contextlib

        disabled = contextlib.nullcontext()
        jax.config.update("jax_enable_compilation_cache", False)
        restore = True
    else:
        restore = False
    try:
        with disabled:
            cc.reset_cache()  # JAX decides once whether it uses the cache: ask again
            return lowered.compile()
    finally:
        if restore:  # pragma: no cover
            jax.config.update("jax_enable_compilation_cache", True)
        cc.reset_cache()


def compiled(name: str, build: Callable[[], Any], args: Any, *, settings: dict[str, Any],
             devices, directory: Path | None, retrace: bool = False) -> tuple[Any, dict[str, Any]]:
    """A ``jax.stages.Compiled`` of ``build()`` (a jitted function) for ``args`` (a pytree
    of arrays or ``ShapeDtypeStruct``), from this process's memory, else from
    ``directory``, else traced and compiled (and then stored). ``devices`` are the devices
    the program runs on (in mesh order). Returns (compiled, info) with info["source"] one of
    "memory" (info["loaded"] tells whether it came from a file), "file", "traced".

    ``retrace=True`` ignores memory and file and replaces both: the caller's way out when
    a loaded program fails to run (``jax.errors.JaxRuntimeError``)."""
    key = cache_key(name, settings, args)
    with _lock:
        if retrace:
            _memory.pop(key, None)
            _origin.pop(key, None)
        hit = _memory.get(key)
        pending = _pending.pop(key, None)
    if hit is not None:
        return hit, {"source": "memory", "key": key, "loaded": _origin.get(key) == "file"}
    info: dict[str, Any] = {"key": key}
    path = _path(directory, name, key)
    exe = None
    if pending is not None and retrace:
        pending.cancel()
        pending = None
    if not retrace and (pending is not None or (path is not None and path.exists())):
        try:
            exe = pending.result() if pending is not None else _read(path, devices)
            info["source"] = "file"
        except Exception as e:  # corrupt, stale or unloadable: trace again and replace it
            log.warning("native engine: cannot load %s (%s: %s); tracing again",
                        path, type(e).__name__, e)
            info["load_error"] = f"{type(e).__name__}: {e}"[:300]
            exe = None
    if exe is None:
        specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args)
        lowered = build().lower(*specs)
        fresh = False
        if path is not None:
            try:
                exe, fresh = _fresh_compile(lowered), True
            except Exception as e:  # cannot bypass JAX's cache here: run, but store nothing
                log.warning("native engine: no fresh compile (%s: %s)", type(e).__name__, e)
        if not fresh:
            exe = lowered.compile()
        info["source"] = "traced"
        if fresh:
            try:
                _write(path, exe)
                info["stored"] = True
                _prune(path.parent, name)
            except Exception as e:  # read-only cache, unserialisable program: run anyway
                log.warning("native engine: cannot store %s (%s: %s)", path,
                            type(e).__name__, e)
                info["store_error"] = f"{type(e).__name__}: {e}"[:300]
    with _lock:
        if key not in _memory:
            _memory[key] = exe
            _origin[key] = info["source"]
        exe = _memory[key]
    return exe, info


def clear_memory() -> None:
    """Forget the executables held by this process (tests)."""
    with _lock:
        _memory.clear()
        _origin.clear()
        pending = list(_pending.values())
        _pending.clear()
    for f in pending:
        f.cancel()
