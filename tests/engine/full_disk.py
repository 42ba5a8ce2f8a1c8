"""The kill pipeline on a disk that fills and frees, in one process (run by test_recovery).

Usage: python -m tests.engine.full_disk tmpfs|rlimit DB_PATH N_RECORDS

``tmpfs``: DB_PATH lies on a small tmpfs; a filler file takes its free space, then is
deleted. ``rlimit``: RLIMIT_FSIZE is lowered to the database files' sizes (writes past it
fail with EFBIG instead of killing the process: SIGXFSZ is ignored), then raised again.
Prints "ok <failed ticks>" when the run ended equal to the oracle.
"""

from __future__ import annotations

import resource
import signal
import sys
from pathlib import Path

from ralf import Ralf, RalfError
from tests.engine.kill_pipeline import assert_equals_oracle, build, forget_when_due


def fill(mode: str, db: Path) -> None:
    if mode == "tmpfs":
        with open(db.parent / "filler", "wb", buffering=0) as filler:  # nothing left to flush
            try:
                while True:
                    filler.write(b"\0" * 65536)
            except OSError:  # ENOSPC: the disk is full
                pass
    else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        wal = db.with_name(db.name + ".wal")  # the file every commit appends to
        size = wal.stat().st_size if wal.exists() else db.stat().st_size
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))


def free(mode: str, db: Path) -> None:
    if mode == "tmpfs":
        (db.parent / "filler").unlink()
    else:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def main() -> None:
    mode, db, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    failed = 0
    with Ralf(str(db)) as server:
        build(server, n)
        for tick in range(10_000):
            if tick == 5:
                fill(mode, db)
            if tick == 12:
                free(mode, db)
            try:
                server.step()
                forget_when_due(server)
            except RalfError:
                failed += 1
            if tick > 12 and server.drained():
                break
        server.run()  # a forget that failed on the full disk is finished by a tick
        server.bulk_query("lazy_counts")
        assert_equals_oracle(server, n)
    print(f"ok {failed}", flush=True)


if __name__ == "__main__":
    main()
