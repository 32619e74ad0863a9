"""tandem's batch layer as an Apache Spark job (Spark >= 4.1, plain
spark-submit, no extra jars), written by `tandem spark-job` from a config.

It reads the master dataset that `tandem export` wrote as Parquet up to a
sealed epoch, applies the batch layer's rules (the first copy of an id in
log order counts, whatever its epoch; a record the config's rules refuse
never counts; events go to the bucket of their event time; epochs <= E),
and writes every view's state, one row per (key, bucket), for
`tandem import` to serve:

    spark-submit JOB.py --master EXPORT_DIR --epoch E --out OUT_DIR

The states are built as tandem builds them, so the import gives the bytes a
native batch run gives: counts; sums in integer millionths (each value
rounded half away from zero, as tandem does, computed exactly for values
below 1.9e22 in magnitude); min and max; distinct values as their sorted
hashes while at most DISTINCT_EXACT_LIMIT, beyond that an HLL_8 sketch of
lgK 14 of the same hashes (`hll_sketch_agg`); quantile values as the
values while at most QUANTILE_EXACT_LIMIT, beyond that the count of each
DDSketch bin (the `<field>__bin` column tandem computed at export). The
manifest, written last, says what the run read and counted; the import
checks it against the master dataset before it serves anything.
"""

import argparse
import json
import time

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

# What the config says, as tandem wrote it (do not edit: the import checks
# the fingerprint against the config it serves).
JOB = json.loads(r"""@JOB@""")


def micros(value):
    """The value in integer millionths, rounded half away from zero, as
    tandem's `(value * 1e6).round()`: the magnitude split into its halves
    above and below 2^32 (each exact in a double, as is its fraction), then
    DECIMAL(38, 0) with the sign put back."""
    scaled = value * F.lit(1000000.0)
    magnitude = F.abs(scaled)
    two32 = F.lit(4294967296.0)
    high = F.floor(magnitude / two32)
    low = magnitude - high * two32
    whole = F.floor(low)
    up = F.when(low - whole >= 0.5, 1).otherwise(0)
    rounded = high.cast("decimal(38,0)") * F.lit(4294967296).cast("decimal(38,0)") + (
        whole + up
    ).cast("decimal(38,0)")
    return F.when(scaled < 0, -rounded).otherwise(rounded)


def key_of(view):
    columns = [F.col(name) for name in view["key_columns"]]
    return columns[0] if len(columns) == 1 else F.concat_ws("|", *columns)


def view_groups(valid, view):
    """One row per (key, bucket) with every metric's state, and per quantile
    metric the bins of its groups past the exact limit."""
    bucket_ms = view["bucket_ms"]
    rows = valid.select(
        key_of(view).alias("key"),
        (F.col("event_ms") - F.pmod(F.col("event_ms"), F.lit(bucket_ms))).alias("bucket"),
        *[F.col(name) for name in view["columns"]],
    )
    aggregates = [F.count(F.lit(1)).alias("count")]
    for at, metric in enumerate(view["metrics"]):
        agg, column = metric["agg"], metric.get("column")
        if agg in ("sum", "mean"):
            aggregates.append(F.sum(micros(F.col(column))).cast("string").alias(f"m{at}_sum"))
        elif agg == "min":
            aggregates.append(F.min(column).alias(f"m{at}"))
        elif agg == "max":
            aggregates.append(F.max(column).alias(f"m{at}"))
        elif agg == "distinct":
            aggregates.append(F.collect_set(column).alias(f"m{at}_set"))
            aggregates.append(F.hll_sketch_agg(column, JOB["hll_lg_k"]).alias(f"m{at}_hll"))
        elif agg == "quantile":
            aggregates.append(F.collect_list(column).alias(f"m{at}_values"))
            aggregates.append(F.min(column).alias(f"m{at}_min"))
            aggregates.append(F.max(column).alias(f"m{at}_max"))
    # Written, and read again for the groups whose quantiles are binned.
    groups = rows.groupBy("key", "bucket").agg(*aggregates).persist()
    # The exact forms while small, the sketches beyond.
    for at, metric in enumerate(view["metrics"]):
        if metric["agg"] == "distinct":
            exact = F.size(F.col(f"m{at}_set")) <= JOB["distinct_exact_limit"]
            groups = groups.withColumn(f"m{at}_exact", F.when(exact, F.col(f"m{at}_set")))
            groups = groups.withColumn(f"m{at}_hll", F.when(~exact, F.col(f"m{at}_hll")))
            groups = groups.drop(f"m{at}_set")
        elif metric["agg"] == "quantile":
            exact = F.col("count") <= JOB["quantile_exact_limit"]
            groups = groups.withColumn(f"m{at}_values", F.when(exact, F.col(f"m{at}_values")))
    bins = {}
    large = groups.where(F.col("count") > JOB["quantile_exact_limit"]).select("key", "bucket")
    for at, metric in enumerate(view["metrics"]):
        if metric["agg"] != "quantile":
            continue
        value, limit = F.col(metric["column"]), JOB["ddsketch_min_value"]
        sign = F.when(value > limit, 1).when(value < -limit, -1).otherwise(0)
        bins[at] = (
            rows.select("key", "bucket", sign.alias("sign"), F.coalesce(F.col(metric["bin"]), F.lit(0)).alias("bin"))
            .join(large, ["key", "bucket"], "left_semi")
            .groupBy("key", "bucket", "sign", "bin")
            .agg(F.count(F.lit(1)).alias("n"))
        )
    return groups, bins


def main():
    parser = argparse.ArgumentParser(description="tandem's batch layer over its exported master dataset")
    parser.add_argument("--master", required=True, help="the folder `tandem export` writes")
    parser.add_argument("--epoch", type=int, required=True, help="the sealed epoch to cover")
    parser.add_argument("--out", required=True, help="where the views' states go (replaced)")
    args = parser.parse_args()
    started = time.time()
    spark = SparkSession.builder.appName(f"tandem batch, epoch {args.epoch}").getOrCreate()
    # The one codec tandem reads (its parquet build has zstd alone).
    spark.conf.set("spark.sql.parquet.compression.codec", "zstd")
    # Unless the command line says otherwise: four shuffle partitions per
    # core the job has (Spark's 200 cost a small cluster more in tasks and
    # files than they save), and hash aggregation of the groups' lists up to
    # a million groups a task before Spark falls back to sorting them.
    given = spark.sparkContext.getConf()
    if not given.contains("spark.sql.shuffle.partitions"):
        partitions = 4 * spark.sparkContext.defaultParallelism
        spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    if not given.contains("spark.sql.objectHashAggregate.sortBased.fallbackThreshold"):
        spark.conf.set("spark.sql.objectHashAggregate.sortBased.fallbackThreshold", "1000000")

    # The manifest goes first and comes back last: an output without one is
    # a run that did not finish.
    jvm = spark.sparkContext._jvm
    out = jvm.org.apache.hadoop.fs.Path(args.out)
    filesystem = out.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    filesystem.delete(jvm.org.apache.hadoop.fs.Path(args.out + "/manifest"), True)

    # Epoch E's file holds the log from the seal before it to its own: the
    # files up to E are the records a batch run of E reads.
    records = (
        spark.read.option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.parquet")
        .parquet(args.master)
        .where(F.col("epoch") <= args.epoch)
    )
    with_id = records.where(F.col("id_hash") != 0)
    first = with_id.withColumn(
        "copy", F.row_number().over(Window.partitionBy("id_hash").orderBy("seq"))
    ).where(F.col("copy") == 1).drop("copy")
    survivors = first.unionByName(records.where(F.col("id_hash") == 0))
    survivors = survivors.persist()
    covered = survivors.where(F.col("stamped_epoch") <= args.epoch)
    valid = covered.where(F.col("rejected").isNull()).persist()

    read = records.agg(
        F.count(F.lit(1)).alias("rows"),
        F.coalesce(F.max("seq"), F.lit(-1)).alias("max_seq"),
        F.coalesce(F.sum(F.when(F.col("stamped_epoch") <= args.epoch, 1).otherwise(0)), F.lit(0)).alias("records"),
    ).first()
    kept = covered.agg(
        F.count(F.lit(1)).alias("kept"),
        F.coalesce(F.sum(F.when(F.col("rejected").isNotNull(), 1).otherwise(0)), F.lit(0)).alias("invalid"),
    ).first()

    views = []
    for at, view in enumerate(JOB["views"]):
        groups, bins = view_groups(valid, view)
        groups.write.mode("overwrite").parquet(f"{args.out}/views/{at}")
        for metric, table in bins.items():
            table.write.mode("overwrite").parquet(f"{args.out}/bins/{at}/{metric}")
        views.append(view["name"])
    firsts = survivors.where(F.col("id_hash") != 0).select("id_hash", "seq")
    firsts.write.mode("overwrite").parquet(f"{args.out}/ids")

    manifest = {
        "epoch": args.epoch,
        "master": args.master,
        "ids": firsts.count(),
        "fingerprint": JOB["fingerprint"],
        "rows": read["rows"],
        "max_seq": read["max_seq"],
        "records": read["records"],
        "duplicates": read["records"] - kept["kept"],
        "invalid": kept["invalid"],
        "counted": kept["kept"] - kept["invalid"],
        "views": views,
        "took_ms": int((time.time() - started) * 1000),
    }
    spark.createDataFrame([(json.dumps(manifest),)], ["value"]).coalesce(1).write.text(
        f"{args.out}/manifest"
    )
    spark.stop()


if __name__ == "__main__":
    main()
