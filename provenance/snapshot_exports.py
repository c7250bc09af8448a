"""A snapshot's current rows as Parquet, CSV or JSON Lines, streamed (issue 20).

Columns: ``record_id``, the features in schema order, the label (the schema's label name).
Never the subject: no pseudonym, no identifier, no internal subject id. Rows come one chunk
at a time, and each chunk is written out and handed to the response before the next is
read, so memory stays one chunk (one Parquet row group) whatever the snapshot's size. On
PostgreSQL, Parquet and CSV are made from the database's own CSV of each chunk
(``selectors.snapshot_export_csv_chunks``, parsed by pyarrow in C); JSON Lines, and every
format on SQLite, from typed Python rows (``selectors.snapshot_export_chunks``).

Every row is read inside one transaction (REPEATABLE READ on PostgreSQL), which first checks
that the snapshot's amendment number is still the one the headers announced: an erasure
committed between the two stops the stream (the client sees a short, broken download and
retries) rather than sending rows that do not match the announced Merkle root.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from django.db import connection, transaction

from provenance.selectors import (
    snapshot_amendment_count,
    snapshot_export_chunks,
    snapshot_export_columns,
    snapshot_export_csv_chunks,
)
from provenance.services.export import SnapshotExport

CONTENT_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
}
MERKLE_LEAF = (
    "leaf = sha256(f'{record_id}:{content_hash}') in ascending record_id, content_hash = sha256 of the canonical "
    "JSON of {'features': {...}, 'label': ...}; parent = sha256(left_hex + right_hex); an odd last node is promoted"
)


class SnapshotChangedError(RuntimeError):
    """An amendment was committed between the export's headers and its rows."""


def export_headers(export: SnapshotExport) -> dict[str, str]:
    return {
        "X-Ledger-Snapshot": str(export.snapshot_id),
        "X-Ledger-Merkle-Root": export.merkle_root,
        "X-Ledger-Amendment": str(export.amendment),
        "X-Ledger-Records": str(export.records),
        "X-Ledger-Schema": export.schema_sha256,
        "Content-Disposition": f'attachment; filename="snapshot-{export.snapshot_id}.{export.format}"',
    }


def parquet_metadata(export: SnapshotExport) -> dict[bytes, bytes]:
    """The file's key-value metadata: the headers' values and the whole schema (types,
    categories, bounds, label), so a Parquet file read on its own says what it holds."""
    values = {
        "ledger.snapshot": str(export.snapshot_id),
        "ledger.dataset": str(export.dataset_id),
        "ledger.merkle_root": export.merkle_root,
        "ledger.amendment": str(export.amendment),
        "ledger.records": str(export.records),
        "ledger.schema": json.dumps(export.schema, ensure_ascii=False),
        "ledger.schema_sha256": export.schema_sha256,
        "ledger.merkle_leaf": MERKLE_LEAF,
    }
    return {k.encode(): v.encode("utf-8") for k, v in values.items()}


def export_stream(export: SnapshotExport, *, chunk_size: int | None = None) -> Iterator[bytes]:
    """The export's bytes, for a StreamingHttpResponse; ``chunk_size`` rows per chunk (and
    per Parquet row group)."""
    outer = connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and not outer:
            # One snapshot of the database for every chunk; must be the transaction's first
            # statement. (Inside a caller's transaction, e.g. a test's, that one decides.)
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if snapshot_amendment_count(snapshot_id=export.snapshot_id) != export.amendment:
            raise SnapshotChangedError(
                f"Snapshot {export.snapshot_id} was amended after the export began: export it again."
            )
        yield from _writer(export, chunk_size)


def _writer(export: SnapshotExport, chunk_size: int | None) -> Iterator[bytes]:
    size = {"chunk_size": chunk_size} if chunk_size else {}
    if connection.vendor == "postgresql" and export.format in ("parquet", "csv"):
        # The database writes the CSV itself and pyarrow parses it in C: no Python object
        # per value, which is what keeps a million-row export near COPY's own speed.
        csv_chunks = snapshot_export_csv_chunks(snapshot_id=export.snapshot_id, schema=export.schema, **size)
        if export.format == "csv":
            return _csv_from_database(export, csv_chunks)
        return _parquet_from_database(export, csv_chunks)
    rows = snapshot_export_chunks(snapshot_id=export.snapshot_id, schema=export.schema, **size)
    if export.format == "parquet":
        return _parquet(export, _arrow_tables(export, rows))
    if export.format == "csv":
        return _csv(export, rows)
    return _jsonl(export, rows)


class _Drain(io.RawIOBase):
    """A write-only file that keeps what was written until drained: pyarrow writes a row
    group into it, the stream hands the bytes on and forgets them."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def _arrow_schema(export: SnapshotExport):
    import pyarrow as pa

    types = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "category": pa.string()}
    fields = [
        pa.field(name, types[kind], nullable=(i != 0))
        for i, (name, kind) in enumerate(snapshot_export_columns(schema=export.schema))
    ]
    return pa.schema(fields, metadata=parquet_metadata(export))


def _arrow_tables(export: SnapshotExport, chunks: Iterable[list[tuple]]):
    import pyarrow as pa

    schema = _arrow_schema(export)
    for rows in chunks:
        columns = list(zip(*rows, strict=True))
        arrays = [pa.array(values, type=field.type) for values, field in zip(columns, schema, strict=True)]
        yield pa.Table.from_arrays(arrays, schema=schema)


def _csv_parser(export: SnapshotExport):
    """A function turning one chunk of the database's CSV into an Arrow table of the export's schema."""
    import pyarrow.csv as pa_csv

    schema = _arrow_schema(export)
    read = pa_csv.ReadOptions(column_names=schema.names)
    # A category value may hold a quoted line break; allowing one costs the parser its
    # parallel split, so only where there is text at all.
    parse = pa_csv.ParseOptions(newlines_in_values=any(str(field.type) == "string" for field in schema))
    # An unquoted empty field is the database's NULL (a missing label); a quoted one is text.
    convert = pa_csv.ConvertOptions(
        column_types={field.name: field.type for field in schema}, strings_can_be_null=True,
        quoted_strings_can_be_null=False, true_values=["true"], false_values=["false"],
    )

    def to_table(chunk: bytes):
        table = pa_csv.read_csv(io.BytesIO(chunk), read_options=read, parse_options=parse, convert_options=convert)
        return table.cast(schema)

    return to_table


def _parquet_writer(sink: _Drain, schema):
    # Imported here: only exports need pyarrow, and the rest of the app loads without it.
    import pyarrow.parquet as pq

    # Dictionary encoding for the category columns only: on float columns it is tried, fails
    # over to plain encoding and costs most of the write (4x here) for a few percent of size.
    categories = [field.name for field in schema if str(field.type) == "string"]
    return pq.ParquetWriter(sink, schema, compression="snappy", use_dictionary=categories or False)


def _parquet(export: SnapshotExport, tables) -> Iterator[bytes]:
    schema = _arrow_schema(export)
    sink = _Drain()
    writer = _parquet_writer(sink, schema)
    try:
        for table in tables:
            # One chunk is one row group: a reader can fetch and decode a part of the file.
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            data = sink.drain()
            if data:
                yield data
    finally:
        writer.close()
    yield sink.drain()


def _parquet_from_database(export: SnapshotExport, csv_chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Parquet from the database's CSV chunks, pipelined: while one thread (this one, which
    owns the database connection) waits for the next chunk's COPY, a second one parses the
    previous chunk and encodes its row group. pyarrow releases the GIL while it works, and
    psycopg2 while it waits, so the database and the encoder run at the same time instead of
    one after the other. The second thread never touches the connection; row groups are
    encoded in order (one worker), at most two chunks are held at once."""
    sink = _Drain()
    writer = _parquet_writer(sink, _arrow_schema(export))
    parse = _csv_parser(export)

    def encode(chunk: bytes) -> bytes:
        table = parse(chunk)
        writer.write_table(table, row_group_size=max(1, table.num_rows))
        return sink.drain()

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-export") as pool:
            pending = None
            for chunk in csv_chunks:
                future = pool.submit(encode, chunk)
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()
    finally:
        writer.close()
    yield sink.drain()


def _csv_from_database(export: SnapshotExport, chunks: Iterable[bytes]) -> Iterator[bytes]:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([name for name, _ in snapshot_export_columns(schema=export.schema)])
    yield buffer.getvalue().encode("utf-8")
    yield from chunks


def _csv_value(value):
    # The spelling record ingest reads back (true/false); an absent label is an empty field.
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value


def _csv(export: SnapshotExport, chunks: Iterable[list[tuple]]) -> Iterator[bytes]:
    columns = snapshot_export_columns(schema=export.schema)
    has_bools = any(kind == "bool" for _, kind in columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    for rows in chunks:
        if has_bools:
            rows = [[_csv_value(v) for v in row] for row in rows]
        writer.writerows(rows)  # floats as repr: the shortest text that reads back exactly
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    tail = buffer.getvalue()
    if tail:
        yield tail.encode("utf-8")


def _jsonl(export: SnapshotExport, chunks: Iterable[list[tuple]]) -> Iterator[bytes]:
    names = [name for name, _ in snapshot_export_columns(schema=export.schema)]
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
    for rows in chunks:
        yield "".join(encode(dict(zip(names, row, strict=True))) + "\n" for row in rows).encode("utf-8")
