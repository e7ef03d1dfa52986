"""PostgreSQL's binary COPY format built from numpy columns, without a Python object per row.

A tuple of the binary format is a field count, then each field as its length and its bytes
(https://www.postgresql.org/docs/15/sql-copy.html, "Binary Format"). Rows whose fields all
have one width (numbers, dates, timestamps; ids of one length) are one numpy structured
array: the columns are written into it as whole arrays and its buffer is the COPY data. Text
of several lengths and NULLs (``NaN`` in a numeric column) make groups of rows, one per
pattern of widths, each one such array.

``numeric`` columns are sent with a fixed six decimals (the demo's ``theta_estimate`` and
``theta_sd``): three base-10000 digits (integer part, then 4 + 2 decimals), which the server
normalises on receipt.

``load_panel`` reads the same format back (``defs/growth/panel.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import psycopg
from psycopg.copy import QueuedLibpqWriter

from ..model.chunks import each_chunk
from ..model.keys import unique_rows

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, header extension length
TRAILER = b"\xff\xff"

# microseconds / days between the Unix epoch and PostgreSQL's (2000-01-01)
_PG_EPOCH_US = 946_684_800 * 1_000_000
_PG_EPOCH_DAYS = 10_957

_NUMERIC_DSCALE = 6
_NUMERIC_LIMIT = 10_000.0  # the first base-10000 digit holds the integer part


@dataclass(frozen=True)
class Column:
    """One column to send: its PostgreSQL type and its values (one per row); ``null``: the
    rows sent as NULL (float8 and int4; a numeric column's non-finite values are NULL)."""

    pg_type: str  # text, float8 (double precision), int4 (integer), date, timestamptz, numeric (six decimals)
    values: np.ndarray
    null: np.ndarray | None = None

    def rows(self, sl: slice) -> "Column":
        """The column of rows ``sl`` only."""
        return Column(self.pg_type, self.values[sl], None if self.null is None else self.null[sl])


# PostgreSQL's own names of the types, as information_schema and table definitions give them
_ALIASES = {"double precision": "float8", "integer": "int4"}


def _field(col: Column, name: str) -> tuple[np.dtype | None, int | None, np.ndarray, np.ndarray | None]:
    """(numpy dtype of the field's bytes, its width, the values to store, NULL mask); a text
    column's dtype and width are None: they are set per group of rows of one length."""
    v = np.asarray(col.values)
    t = _ALIASES.get(col.pg_type, col.pg_type)
    if t == "text":  # UTF-8 bytes
        if v.dtype.kind == "O":  # astype(str) would send a None as the text 'None'
            bad = [i for i, x in enumerate(v.tolist()) if not isinstance(x, (str, bytes))]
            if bad:
                raise ValueError(f"{name}: text values must be strings, not {v[bad[0]]!r} in row {bad[0]}")
        return None, None, v if v.dtype.kind == "S" else np.char.encode(v.astype(str), "utf-8"), None
    null = None if col.null is None else np.asarray(col.null, dtype=bool)
    if null is not None and t not in ("float8", "int4"):
        raise ValueError(f"{name}: NULLs by mask are for float8 and int4 columns, not {t!r}")
    if t == "float8":
        return np.dtype(">f8"), 8, v.astype(np.float64), null
    if t == "int4":
        return np.dtype(">i4"), 4, _int32(v, null, name, "int4"), null
    if t == "date":
        days = v.astype("datetime64[D]").astype(np.int64) - _PG_EPOCH_DAYS
        return np.dtype(">i4"), 4, _int32(days, None, name, "date"), None
    if t == "timestamptz":
        us = v.astype("datetime64[us]").astype(np.int64) - _PG_EPOCH_US
        return np.dtype(">i8"), 8, us, None
    if t == "numeric":
        x = v.astype(np.float64)
        null = ~np.isfinite(x)
        # the limit on the value as rounded to the scale (9999.9999996 is 10000.000000)
        q = np.rint(np.minimum(np.abs(np.where(null, 0.0, x)), _NUMERIC_LIMIT) * 10**_NUMERIC_DSCALE).astype(np.int64)
        if bool(np.any(q >= round(_NUMERIC_LIMIT * 10**_NUMERIC_DSCALE))):
            raise ValueError(f"{name}: numeric values for binary COPY must be below {_NUMERIC_LIMIT:g} in size")
        d = np.empty(x.size, dtype=np.dtype([("nd", ">i2"), ("w", ">i2"), ("sign", ">u2"), ("ds", ">i2"),
                                             ("d0", ">i2"), ("d1", ">i2"), ("d2", ">i2")]))
        d["nd"], d["w"], d["ds"] = 3, 0, _NUMERIC_DSCALE
        d["sign"] = np.where(x < 0, 0x4000, 0)
        d["d0"] = q // 10**6
        d["d1"] = (q // 100) % 10_000
        d["d2"] = (q % 100) * 100
        return np.dtype((np.void, 14)), 14, d.view(np.dtype((np.void, 14))), null
    raise ValueError(f"{name}: no binary COPY encoding for type {t!r}")


def _int32(v: np.ndarray, null: np.ndarray | None, name: str, t: str) -> np.ndarray:
    """``v`` as int32, each value checked: numpy's cast wraps 2**31 to -2**31 and cuts 1.5 to 1,
    which the server would then store (an INSERT of the same value fails)."""
    keep = np.ones(v.shape, dtype=bool) if null is None else ~null
    x = v[keep]
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or not np.all(x == np.round(x)):
            raise ValueError(f"{name}: {t} values must be whole numbers")
    elif x.dtype.kind not in "iub":
        raise ValueError(f"{name}: no {t} encoding for values of type {x.dtype}")
    out = (x < -2**31) | (x > 2**31 - 1)
    if bool(np.any(out)):
        raise ValueError(f"{name}: {t} values must be within -2147483648..2147483647, not {int(x[out][0])}")
    r = np.zeros(v.shape, dtype=np.int32)
    r[keep] = x.astype(np.int32)
    return r


def encode(columns: Mapping[str, Column]) -> bytes:
    """The tuples of ``columns`` (all of one length) in binary COPY format, without header.

    Rows are written in groups of one width (one pattern of NULLs and text lengths): ids of a
    few lengths make a few groups. The order of rows is not kept (a table has none)."""
    fields = {name: _field(col, name) for name, col in columns.items()}
    lengths = {v.shape[0] for _, _, v, _ in fields.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of binary COPY differ in length: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    if n == 0:
        return b""
    # one key column per NULL-able or text field: -1 for NULL, else the width in bytes
    keyed = [name for name, (dt, _, _, m) in fields.items() if dt is None or (m is not None and m.any())]
    if not keyed:
        return _tuples(fields, np.arange(n), {})
    key = np.empty((n, len(keyed)), dtype=np.int64)
    for j, name in enumerate(keyed):
        dt, width, values, mask = fields[name]
        key[:, j] = np.char.str_len(values) if dt is None else width
        if mask is not None:
            key[mask, j] = -1
    groups, inverse = unique_rows(list(key.T))
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(groups.shape[0] + 1))
    return b"".join(_tuples(fields, order[bounds[g]:bounds[g + 1]], dict(zip(keyed, groups[g].tolist())))
                    for g in range(groups.shape[0]))


def _tuples(fields, rows: np.ndarray, widths: dict[str, int]) -> bytes:
    """Rows of one width: ``widths`` gives each keyed field's width (-1: NULL)."""
    spec = [("nf", ">i2")]
    for name, (dt, _, _, _) in fields.items():
        spec.append((f"{name}__len", ">i4"))
        w = widths.get(name)
        if w is None or w > 0:  # a NULL (-1) or an empty text (0) has no bytes
            spec.append((name, dt if dt is not None else np.dtype(f"S{w}")))
    a = np.empty(rows.size, dtype=np.dtype(spec))
    a["nf"] = len(fields)
    for name, (dt, width, values, _) in fields.items():
        w = widths.get(name, width)
        a[f"{name}__len"] = w
        if w > 0:
            a[name] = values[rows]
    return a.tobytes()


def copy_in(conn: psycopg.Connection, table: str, names: Sequence[str], data: Iterable[bytes]) -> None:
    """One COPY of ``data`` (what ``encode`` made of columns ``names``, in pieces) into ``table``.

    A thread of psycopg's (``QueuedLibpqWriter``) sends each piece while this one encodes the
    next, so the server can store rows meanwhile (the plain writer returns only once a piece
    is sent; for ``write_fit`` the gain measured was not steady: ``benchmarks/results/fit_1206.md``)."""
    cur = conn.cursor()
    with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT binary)",
                  writer=QueuedLibpqWriter(cur)) as copy:
        copy.write(SIGNATURE)
        for piece in data:
            copy.write(piece)
        copy.write(TRAILER)


class CopyFormatError(ValueError):
    """Binary COPY data that is not the layout the reader was told to expect; ``row``: the
    first tuple that differs (counted from 0), when one is known."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


def copy_out_tuples(conn: psycopg.Connection, query: str, params: Any = None,
                    piece_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The rows of ``COPY (query) TO STDOUT (FORMAT binary)`` as pieces of about
    ``piece_bytes``, without the stream's signature and trailer: what ``copy_in`` sends between
    its own, so the rows of several such reads (of the same columns) go into one COPY."""
    sig, trailer = len(SIGNATURE), len(TRAILER)
    buf, started = bytearray(), False
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT binary)", params) as copy:
        for chunk in copy:
            buf += chunk
            if not started:
                if len(buf) < sig:
                    continue
                if bytes(buf[:sig]) != SIGNATURE:
                    raise CopyFormatError(f"a binary COPY that starts with {bytes(buf[:sig])!r}")
                del buf[:sig]
                started = True
            if len(buf) > piece_bytes + trailer:  # the last bytes may be the trailer: kept back
                yield bytes(buf[:-trailer])
                del buf[:-trailer]
    if not started or bytes(buf[-trailer:]) != TRAILER:
        raise CopyFormatError("a binary COPY that ends without its trailer")
    if len(buf) > trailer:
        yield bytes(buf[:-trailer])


# the binary form of a one-dimensional array without NULLs: ndim, has-NULLs flag, element type
# oid, length, lower bound; then each element as its length and its bytes
_ARRAY_HEADER = 20
_ARRAY_TYPES = {"int4": (23, 4, ">i4"), "float8": (701, 8, ">f8")}


def _at(buf: np.ndarray, dtype: str) -> np.ndarray:
    """``dtype`` read at every byte offset of ``buf`` (a view: index it with the offsets)."""
    width = np.dtype(dtype).itemsize
    return np.ndarray(shape=(max(buf.size - width + 1, 0),), dtype=dtype, buffer=buf, strides=(1,))


_DECODE_CHUNK_ROWS = 500_000  # rows decoded at a time: the element offsets' temporaries stay small


def _array_tuple_sizes(k: np.ndarray, specs) -> np.ndarray:
    """Bytes of each tuple: the field count (2), then per field its length (4), the array
    header and k elements of (4 + width) bytes."""
    return np.full(k.size, 2, dtype=np.int64) + sum(4 + _ARRAY_HEADER + k * (4 + w) for _, w, _ in specs)


def decode_arrays(data: bytes | bytearray | memoryview | np.ndarray, lengths: np.ndarray,
                  types: Sequence[str], chunk_rows: int = _DECODE_CHUNK_ROWS, *,
                  dtypes: Sequence[np.dtype | str | None] | None = None, workers: int = 1) -> list[np.ndarray]:
    """Binary COPY ``data`` (header and trailer included) of tuples whose fields are arrays of
    ``types`` (``int4``, ``float8``), row ``i``'s arrays all of ``lengths[i]`` (>= 1) elements
    without NULLs: one flat column per field, rows' elements in order (vectorised: no Python
    object per row or element; ``chunk_rows`` rows at a time, so the offsets' temporaries do
    not grow with the data). Every length, count, type and flag of the layout is checked;
    CopyFormatError names the first that differs.

    ``dtypes``: each column's dtype (None: the field's own, int32 or float64), converted as it
    is decoded (no second pass). ``workers``: threads decoding chunks at once (numpy works
    without the GIL; each chunk's place in the data is known from ``lengths``)."""
    k = np.asarray(lengths, dtype=np.int64)
    specs = [_ARRAY_TYPES[t] for t in types]
    b = np.frombuffer(data, dtype=np.uint8)
    if k.size and int(k.min()) < 1:
        raise CopyFormatError(f"every row's arrays must have >= 1 element, got {int(k.min())}")
    sizes = _array_tuple_sizes(k, specs)
    expected = len(SIGNATURE) + int(np.sum(sizes)) + len(TRAILER)
    i2, i4 = _at(b, ">i2"), _at(b, ">i4")
    if b.size != expected or bytes(b[:len(SIGNATURE)]) != SIGNATURE or bytes(b[b.size - 2:]) != TRAILER:
        if bytes(b[:len(SIGNATURE)]) == SIGNATURE:  # a row of another layout (a NULL element, 2-D): which
            _refuse_first_misfit(b, i2, i4, k, types, specs, sizes)
        raise CopyFormatError(f"binary COPY of {k.size} rows with {int(k.sum())} elements: {expected} bytes"
                              f" expected with its signature and trailer, got {b.size}")
    dtypes = list(dtypes) if dtypes is not None else [None] * len(specs)
    out = [np.empty(int(k.sum()), dtype=want if want is not None else dt[1:])
           for (_, _, dt), want in zip(specs, dtypes)]
    step = max(int(chunk_rows), 1)
    starts = np.arange(0, k.size, step)
    row_at = len(SIGNATURE) + np.concatenate([[0], np.cumsum(sizes)])[starts]  # each chunk's first byte
    el_at = np.concatenate([[0], np.cumsum(k)])[starts]  # and first element
    del sizes

    def chunk(j: int) -> None:
        lo, e0 = int(starts[j]), int(el_at[j])
        kc = k[lo:lo + step]
        n_el = int(kc.sum())
        sz = _array_tuple_sizes(kc, specs)
        _decode_rows(b, i2, i4, int(row_at[j]) + np.cumsum(sz) - sz, kc, types, specs,
                     [o[e0:e0 + n_el] for o in out], lo)

    each_chunk(chunk, starts.size, workers)  # the lowest chunk's error first: the first bad row
    return out


def _decode_rows(b, i2, i4, at: np.ndarray, k: np.ndarray, types, specs, out: list[np.ndarray],
                 first_row: int) -> None:
    """Decode the tuples starting at byte offsets ``at`` (``k`` elements each) into ``out``;
    CopyFormatError names the first row (counted from ``first_row``) and field that differ.

    The layout is checked a word at a time: per field, its length and ndim as one 8-byte
    word, the NULL flag and element type as another, the array's length, and the first
    element's length (an element's length word can only be the type's width here: no NULLs,
    one type, the field's length checked). Only where a word differs are the fields looked
    at one by one, to name what differs."""
    i8 = _at(b, ">i8")
    ok = i2[at] == len(specs)
    pos = at + 2
    el = np.arange(int(k.sum()))  # the chunk's elements
    before = np.cumsum(k) - k  # elements in the rows before each row
    for (oid, w, dt), col in zip(specs, out):
        first = pos + 4 + _ARRAY_HEADER  # each row's first element's length word
        ok &= i8[pos] == ((_ARRAY_HEADER + k * (4 + w)) << 32) | 1
        ok &= i8[pos + 8] == oid
        ok &= i4[pos + 16] == k
        ok &= i4[first] == w
        col[:] = _at(b, dt)[np.repeat(first + 4 - (4 + w) * before, k) + (4 + w) * el]
        pos = pos + 4 + _ARRAY_HEADER + k * (4 + w)
    if not bool(ok.all()):
        _refuse(i2, i4, at, k, types, specs, first_row)


def _refuse_first_misfit(b: np.ndarray, i2, i4, k: np.ndarray, types, specs, sizes: np.ndarray) -> None:
    """When the data's size is not the layout's: walk the tuples by their own field lengths to
    the first whose size differs, and refuse it by name (``_refuse``); nothing if none is found
    (then the size is all that can be said). Only on the way to an error: a loop per row."""
    pos = len(SIGNATURE)
    for r in range(k.size):
        if pos + 2 > b.size:  # the data ends before this row
            return
        p = pos + 2
        for _ in specs:
            if p + 4 > b.size:
                break
            p += 4 + max(int(i4[p]), 0)
        if p != pos + int(sizes[r]) or int(i2[pos]) != len(specs):
            try:
                _refuse(i2, i4, np.array([pos]), k[r:r + 1], types, specs, r)
            except IndexError:  # the data ends inside this row
                return
            return
        pos = p


def _refuse(i2, i4, at: np.ndarray, k: np.ndarray, types, specs, first_row: int) -> None:
    """CopyFormatError naming the first row whose layout differs (after it, offsets are
    meaningless) and in it the first field that differs, in the order of its bytes."""
    checks = [("field count", i2[at], len(specs))]
    at = at + 2
    for t, (oid, w, _) in zip(types, specs):
        # the array's own header first: a field's length follows from it (a NULL element is 4
        # bytes shorter), and says less
        checks += [(f"{t}[] ndim", i4[at + 4], 1), (f"{t}[] NULL flag", i4[at + 8], 0),
                   (f"{t}[] element type", i4[at + 12], oid), (f"{t}[] length", i4[at + 16], k),
                   (f"{t}[] field length", i4[at], _ARRAY_HEADER + k * (4 + w)),
                   (f"{t}[] element length", i4[at + 4 + _ARRAY_HEADER], w)]
        at = at + 4 + _ARRAY_HEADER + k * (4 + w)
    found = []
    for j, (what, got, want) in enumerate(checks):
        bad = np.flatnonzero(got != want)
        if bad.size:
            i = int(bad[0])
            found.append((i, j, what, int(got[i]), int(np.broadcast_to(want, got.shape)[i])))
    if not found:
        return
    row, _, what, got, want = min(found)
    raise CopyFormatError(f"binary COPY row {first_row + row}: {what} is {got}, expected {want}"
                          + (" (an element is NULL)" if what.endswith("NULL flag") else ""), row=first_row + row)
