"""What checking finished outputs by default costs, beside what writing and reading them costs anyway.

Every committed shard, stage file and release file has its size and SHA-256 in its marker, and each run that resumes
or reuses it reads it once to check it (`hf_ipt.store.file_damage`; later checks in the same process are remembered).
This prints, on one Parquet file of text rows written the way a shard is: the SHA-256 at commit, the check on the
next run (read + hash), a second check in the same run, and beside them the write (with fsync) and a
`pyarrow.parquet.read_table` of the same file, as ratios.

Run:
    .venv/bin/python bench/bench_verify.py              # ~200 MB file
    .venv/bin/python bench/bench_verify.py --rows 20000  # ~25 MB
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from hf_ipt.store import Store, checksum, file_damage


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=170_000, help="rows of 1,200 characters each")
    args = parser.parse_args()

    table = pa.table({"text": [os.urandom(600).hex() for _ in range(args.rows)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    data = buffer.getvalue()
    folder = tempfile.mkdtemp(prefix="hf-ipt-bench-verify-")
    try:
        store = Store(folder)
        write = timed(lambda: store.write_atomic("data/train-00000-of-00001.parquet", data))
        recorded: dict = {}
        commit = timed(lambda: recorded.update(checksum(data)))
        time.sleep(2.5)  # a file is remembered once settled (see Store.sha256)
        check = timed(lambda: file_damage(store, "data/train-00000-of-00001.parquet", recorded))
        again = timed(lambda: file_damage(store, "data/train-00000-of-00001.parquet", recorded))
        read = timed(lambda: pq.read_table(store.path("data/train-00000-of-00001.parquet")))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    mb = len(data) / 1e6
    print(f"file: {mb:.0f} MB of Parquet ({args.rows:,} rows)")
    print(f"{'write + fsync':<32} {write:7.3f} s")
    print(f"{'SHA-256 at commit':<32} {commit:7.3f} s   {commit / write:5.2f}x the write   {mb / commit:6.0f} MB/s")
    print(f"{'check on the next run':<32} {check:7.3f} s   {check / read:5.2f}x a read_table")
    print(f"{'check again, same process':<32} {again * 1000:7.3f} ms")
    print(f"{'pyarrow read_table':<32} {read:7.3f} s")


if __name__ == "__main__":
    main()
