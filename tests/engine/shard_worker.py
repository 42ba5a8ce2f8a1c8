"""One sharded worker, run in a subprocess by test_routing: the kill_pipeline pipeline on
shard SHARD of NUM_SHARDS, sharing the PostgreSQL database at URL.

Usage: python -m tests.engine.shard_worker URL SHARD NUM_SHARDS N_RECORDS
"""

from __future__ import annotations

import sys

from ralf import Ralf
from tests.engine.kill_pipeline import build


def main() -> None:
    url, shard, num_shards, n = sys.argv[1], *map(int, sys.argv[2:5])
    with Ralf(url, shard=shard, num_shards=num_shards) as server:
        build(server, n, sharded=True)  # SQL lookups and windows are refused with shards
        server.run()
        server.bulk_query("lazy_counts")  # a lazy table catches up on this shard's keys
        print("done", flush=True)


if __name__ == "__main__":
    main()
