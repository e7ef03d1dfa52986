"""The native engine's on-disk executables (``native_export``): a new process loads the
compiled sampler instead of tracing it, with the same draws; bad files fall back to
tracing and are replaced."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from growth_assets.model import native, native_export

from .test_native import SMALL, synthetic

HERE = Path(__file__).resolve().parent

_CHILD = """
import hashlib, json, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {here!r})
from test_native import synthetic, SMALL
from growth_assets.model.native import NativeEngine
res = NativeEngine().fit(synthetic(60, seed=8), SMALL)
keep = {{k: res[k] for k in ("posterior_summary", "predictions")}}
print(json.dumps({{"sampler": res["sampler"], "timings": res["diagnostics"]["timings_s"],
                  "hash": hashlib.sha256(json.dumps(keep).encode()).hexdigest()}}))
"""


def _child(cache_dir: Path) -> dict:
    import os

    code = _CHILD.format(repo=str(HERE.parents[1]), here=str(HERE))
    env = {**os.environ, "GROWTH_JAX_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_process_loads_the_sampler_and_gets_the_same_draws(tmp_path):
    import hashlib

    cache = tmp_path / "jax"
    first, second = _child(cache), _child(cache)
    assert first["sampler"]["program"] == "traced" and not first["sampler"]["program_loaded"]
    assert second["sampler"]["program"] == "file" and second["sampler"]["program_loaded"]
    assert first["hash"] == second["hash"]  # traced and deserialised: the same program
    names = sorted(p.name.split("-")[0] for p in (cache / "native_exec").glob("*.bin"))
    assert names == ["laplace_grad", "laplace_hessian", "nuts"]
    assert not list((cache / "native_exec").glob("*.tmp"))
    # and this process (its own cache, traced or loaded) agrees when it has the same devices
    res = native.NativeEngine().fit(synthetic(60, seed=8), SMALL)
    if res["sampler"]["n_devices"] == first["sampler"]["n_devices"]:
        keep = {k: res[k] for k in ("posterior_summary", "predictions")}
        assert hashlib.sha256(json.dumps(keep).encode()).hexdigest() == first["hash"]


# --- the cache mechanics, on a small program -------------------------------------------------


@jax.jit
def _poly(x, y):
    return (jnp.sin(x) * y + x**2).sum(), x * 2.0


def _args():
    return (np.linspace(0.0, 1.0, 7), np.float64(3.0))


def _get(tmp_path, **kw):
    with native._x64():
        return native_export.compiled("poly", lambda: _poly, _args(), settings={"k": 1},
                                      devices=jax.devices()[:1], directory=tmp_path, **kw)


def _value(exe):
    with native._x64():
        return [np.asarray(v) for v in exe(*_args())]


@pytest.fixture
def fresh_memory():
    native_export.clear_memory()
    yield
    native_export.clear_memory()


def test_traced_then_memory_then_file(tmp_path, fresh_memory):
    exe, info = _get(tmp_path)
    assert info["source"] == "traced" and info["stored"]
    want = _value(exe)
    assert _get(tmp_path)[1]["source"] == "memory"
    native_export.clear_memory()
    exe2, info2 = _get(tmp_path)
    assert info2["source"] == "file"
    for a, b in zip(want, _value(exe2)):
        np.testing.assert_array_equal(a, b)
    (f,) = tmp_path.glob("poly-*.bin")
    assert f.stat().st_mode & 0o644 == 0o644


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_a_bad_file_is_traced_again_and_replaced(tmp_path, fresh_memory, damage):
    exe, _ = _get(tmp_path)
    want = _value(exe)
    (f,) = tmp_path.glob("poly-*.bin")
    raw = bytearray(f.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 3]
    elif damage == "empty":
        raw = bytearray()
    else:
        raw = bytearray(b"not an executable at all" * 10)
    f.write_bytes(bytes(raw))
    native_export.clear_memory()
    exe2, info = _get(tmp_path)
    assert info["source"] == "traced" and "load_error" in info and info["stored"]
    for a, b in zip(want, _value(exe2)):
        np.testing.assert_array_equal(a, b)
    native_export.clear_memory()
    assert _get(tmp_path)[1]["source"] == "file"


def test_retrace_replaces_memory_and_file(tmp_path, fresh_memory):
    _get(tmp_path)
    exe, info = _get(tmp_path, retrace=True)
    assert info["source"] == "traced"
    native_export.clear_memory()
    assert _get(tmp_path)[1]["source"] == "file"


def test_keys_follow_settings_shapes_and_names():
    with native._x64():
        base = native_export.cache_key("a", {"n": 1}, _args())
        assert base == native_export.cache_key("a", {"n": 1}, _args())
        assert base != native_export.cache_key("b", {"n": 1}, _args())
        assert base != native_export.cache_key("a", {"n": 2}, _args())
        assert base != native_export.cache_key("a", {"n": 1}, (np.zeros(8), np.float64(1)))
    assert base != native_export.cache_key("a", {"n": 1}, _args())  # x64 is in the key


def test_concurrent_writers_leave_one_whole_file(tmp_path, fresh_memory):
    exe, _ = _get(tmp_path)
    (f,) = tmp_path.glob("poly-*.bin")
    f.unlink()
    errors = []

    def write():
        try:
            native_export._write(f, exe)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and [p.name for p in tmp_path.iterdir()] == [f.name]
    native_export.clear_memory()
    assert _get(tmp_path)[1]["source"] == "file"


def test_unwritable_cache_still_runs(tmp_path, fresh_memory):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    exe, info = _get(blocker / "sub")
    assert info["source"] == "traced" and "store_error" in info
    assert np.isfinite(_value(exe)[0])


def test_prng_key_is_jax_default_key():
    with native._x64():
        for seed in (0, 1, 77, 2**31 + 5, 2**32 - 1, 2**32 + 3, 12345678901):
            want = np.asarray(jax.random.PRNGKey(int(seed) % (2**32)))
            np.testing.assert_array_equal(native._prng_key(seed), want)


def test_a_cached_sampler_that_fails_to_run_is_traced_again(monkeypatch):
    """A loaded program that raises when run (as an incompletely serialised executable
    does: "NOT_FOUND: Function ... not found") is replaced by a traced one, same draws."""
    panel = synthetic(30, seed=3)
    good = native.NativeEngine().fit(panel, SMALL)
    real = native_export.compiled
    calls = []

    class Broken:
        def __call__(self, *a, **k):
            raise jax.errors.JaxRuntimeError("NOT_FOUND: Function fusion.1 not found")

    def flaky(name, build, args, **kw):
        calls.append((name, kw.get("retrace", False)))
        if name == "nuts" and not kw.get("retrace", False):
            return Broken(), {"source": "file"}
        return real(name, build, args, **kw)

    monkeypatch.setattr(native_export, "compiled", flaky)
    again = native.NativeEngine().fit(panel, SMALL)
    assert ("nuts", False) in calls and ("nuts", True) in calls
    assert again["sampler"]["program"] == "traced"
    for key in ("posterior_summary", "predictions"):
        assert again[key] == good[key]


def test_prune_keeps_the_newest_files_and_drops_stale_temporaries(tmp_path):
    import os
    import time

    now = time.time()
    for i in range(5):
        f = tmp_path / f"nuts-{i:040d}.bin"
        f.write_bytes(b"x")
        os.utime(f, (now - 100 + i, now - 100 + i))
    other = tmp_path / "laplace_grad-0.bin"
    other.write_bytes(b"x")
    stale, fresh = tmp_path / "nuts-1.bin.a.tmp", tmp_path / "nuts-2.bin.b.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (now - 7200, now - 7200))
    native_export._prune(tmp_path, "nuts", keep=2)
    assert sorted(p.name for p in tmp_path.glob("nuts-*.bin")) == [
        f"nuts-{3:040d}.bin", f"nuts-{4:040d}.bin"]
    assert other.exists() and fresh.exists() and not stale.exists()
