#!/usr/bin/env python3
"""Reference batch job in DuckDB, for a same-run comparison with tandem's recompute.

    pip install duckdb
    tandem generate --events 5000000 --seed 7 > /tmp/ev5m.jsonl
    python3 bench/duckdb_reference.py /tmp/ev5m.jsonl [runs]

The job is the batch view of the example config's by-product view: drop duplicate
order_ids (one row per id), then per (product_id, 1-minute event-time bucket):
count, sum(amount), approximate distinct user_id, 0.95 quantile of amount.
Each run uses a fresh connection with 2 threads and materialises the whole result.
Last line: `anchor: duckdb_recompute_eps VALUE events/s` (median of the runs).
The end-to-end benchmark (examples/bench.rs) runs it when duckdb is installed.
"""
import statistics
import sys
import time

import duckdb

src, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
cols = ("{order_id:'VARCHAR', ts:'TIMESTAMP', product_id:'VARCHAR', category:'VARCHAR', "
        "user_id:'VARCHAR', amount:'DOUBLE', qty:'INTEGER', country:'VARCHAR'}")
query = f"""
CREATE OR REPLACE TABLE result AS
WITH ev AS (
    SELECT DISTINCT ON (order_id) order_id, ts, product_id, user_id, amount
    FROM read_json('{src}', format='newline_delimited', columns={cols})
)
SELECT product_id, time_bucket(INTERVAL '1 minute', ts) AS minute,
       count(*) AS n, sum(amount) AS revenue,
       approx_count_distinct(user_id) AS users, quantile_cont(amount, 0.95) AS p95_amount
FROM ev GROUP BY ALL
"""
lines = sum(1 for _ in open(src, "rb"))
times = []
for i in range(runs):
    con = duckdb.connect()
    con.execute("SET threads=2")
    t0 = time.perf_counter()
    con.execute(query)
    times.append(time.perf_counter() - t0)
    groups, events = con.execute("SELECT count(*), sum(n) FROM result").fetchone()
    con.close()
    print(f"run {i + 1}: {times[-1]:.3f} s, {groups} groups, {events} events after dedup", flush=True)
med = statistics.median(times)
print(f"anchor: duckdb_recompute_eps {lines / med:.0f} events/s")
