"""The native engine's traced programs kept on disk between processes, on public JAX APIs.

Tracing numpyro's NUTS (its warm-up and sampling loops) and lowering it cost seconds in
every new process; JAX's persistent compilation cache (``jax_compilation_cache_dir``)
spares only the XLA compilation after that. So each program is also exported with
``jax.export`` (StableHLO, JAX's public serialisation with a compatibility guarantee) to
``<cache>/programs/<name>-<key>.jaxexport``: a later process deserialises it and calls it,
tracing nothing, and its compilation is then a hit in the persistent cache. Both the
tracing and the loading process call the same ``Exported``, so their results are the
same program's.

The key covers what the program depends on: its name and static settings, the abstract
arguments, the JAX/jaxlib/numpyro versions, the platform, x64 and the PRNG, and a hash of
the engine's source files. A missing, truncated, corrupt or incompatible file falls back
to tracing, and the new file replaces it (written to a temporary name and renamed, so a
concurrent reader never sees half a file). The files are StableHLO, not Python objects: loading
one runs no Python code.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)

MAX_FILES_PER_NAME = 16
_SOURCES = ("native.py", "native_math.py", "lines.py", "programs.py")
_MAGIC = b"GAJAXEXPORT1\n"
_lock = threading.Lock()
_memory: dict[str, Callable] = {}


@functools.lru_cache(maxsize=None)
def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - metadata missing
        return "unknown"


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:24]


def _signature(args: Any) -> list:
    leaves, tree = jax.tree.flatten(args)
    return [str(tree), [[list(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))]
                        for x in leaves]]


def cache_key(name: str, static: dict[str, Any], args: Any) -> str:
    env = {"jax": jax.__version__, "jaxlib": package_version("jaxlib"),
           "numpyro": package_version("numpyro"), "platform": jax.default_backend(),
           "x64": bool(jax.config.jax_enable_x64), "prng": str(jax.config.jax_default_prng_impl),
           "source": _source_hash()}
    blob = json.dumps({"name": name, "static": static, "args": _signature(args), "env": env},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read(path: Path):
    raw = path.read_bytes()
    if not raw.startswith(_MAGIC):
        raise ValueError("not a growth_assets program file")
    digest, body = raw[len(_MAGIC):len(_MAGIC) + 32], raw[len(_MAGIC) + 32:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch (truncated or corrupt file)")
    return jax.export.deserialize(bytearray(body))


def _write(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; a shared cache must stay readable
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(body).digest() + body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _prune(path.parent, path.name.split("-")[0])


def _prune(directory: Path, name: str, keep: int = MAX_FILES_PER_NAME) -> None:
    """Keep the ``keep`` newest files of a program (every new version, source or shape makes
    a new key) and drop temporary files a killed writer left."""
    try:
        files = sorted(directory.glob(f"{name}-*.jaxexport"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:  # another process pruning at the same time, or a read-only cache
        pass


def program(name: str, make: Callable[[], Callable], args: Any, *, static: dict[str, Any],
            directory: Path | None, retrace: bool = False,
            shardings: tuple[Any, Any] | None = None) -> tuple[Callable, str]:
    """``make()`` (a function of ``args``) as a jitted program and where it came from:
    ``memory`` (an earlier call in this process), ``file`` (deserialised) or ``traced``.
    ``shardings``: (in, out) of a program over several devices (``make`` returns it jitted
    with them); the loaded program is called with the same."""
    key = cache_key(name, static, args)
    path = None if directory is None else Path(directory) / f"{name}-{key}.jaxexport"
    with _lock:
        if not retrace and key in _memory:
            return _memory[key], "memory"
        exp, origin = None, "traced"
        if path is not None and path.exists() and not retrace:
            try:
                exp, origin = _read(path), "file"
            except Exception as e:  # any bad file: trace again, and replace it
                log.warning("native engine: program file %s unusable (%s); tracing again", path.name, e)
        if exp is None:
            fn = make()
            exp = jax.export.export(fn if hasattr(fn, "lower") else jax.jit(fn))(*args)
            if path is not None:
                try:
                    _write(path, bytes(exp.serialize()))
                except OSError as e:  # a read-only cache still lets the fit run
                    log.warning("native engine: could not store %s (%s)", path.name, e)
        kw = {} if shardings is None else {"in_shardings": shardings[0], "out_shardings": shardings[1]}
        _memory[key] = call = jax.jit(exp.call, **kw)
        return call, origin


_pool = None
# glibc's malloc_trim (None elsewhere: musl, macOS)
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if os.name == "posix" else None


def give_back_memory() -> None:
    """Return the heap's free memory to the system. XLA compiling a program frees ~400 MB when
    it ends, and glibc kept it in the compiling thread's arena, where the fit's later arrays
    (allocated by another thread) never reuse it: a process whose programs were compiled
    afresh peaked ~400 MB higher than one that loaded them (a million students: 1612-1722 MB
    against 1249 MB)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _then_give_back(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    finally:
        give_back_memory()


def ahead(fn: Callable[[], Any]):
    """Run ``fn`` (loading and compiling a program: XLA works without the GIL) in a
    background thread, and give the memory it freed back (``give_back_memory``); returns its
    Future. The fit overlaps it with the Laplace step."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="growth-programs")
    return _pool.submit(_then_give_back, fn)


def forget() -> None:
    """Drop the programs held in memory (tests: make the next call read the files)."""
    with _lock:
        _memory.clear()
