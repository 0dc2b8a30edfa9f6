TARGETS.append(str(LAYOUT.prepared_parquet()))
TARGETS.append(str(LAYOUT.dedup_report()))

# dedup.partitions > 1 splits the records by coarse H3 cells (pvlake.partition): a split
# job, one job per partition (a cluster runs them side by side), and the merge in the
# dedup rule; 1 keeps the one-process path.
DEDUP_PARTITIONS = config["dedup"]["partitions"]
# The rule parameters DedupParams takes (the rest says how to split and what to score).
DEDUP_RULES = {k: v for k, v in config["dedup"].items() if k not in ("ground_truth", "partitions", "partition_resolution")}
DEDUP_STAGING = [str(LAYOUT.staging_parquet(d)) for d in DATASETS]

# Memory a dedup job asks the scheduler for: a base plus a multiple of its input's size on
# disk (workflow/scripts/bench_scaling.py: ~19x the staging GeoParquet in one process,
# ~30x a partition file).


if DEDUP_PARTITIONS > 1:

    rule dedup_split:
        """Staging records into partitions of coarse H3 cells, each with the halo of
        cells the duplicate rules reach (streamed in batches: bounded memory)."""
        input:
            staging=DEDUP_STAGING,
        output:
            records=str(LAYOUT.dedup_records()),
            parts=[temp(str(LAYOUT.dedup_partition(p))) for p in range(DEDUP_PARTITIONS)],
            report=str(LAYOUT.dedup_split_report()),
        log:
            str(LAYOUT.log("dedup", "split")),
        params:
            data_dir=config["data_dir"],
            rules=json.dumps(DEDUP_RULES, sort_keys=True),
            resolution=config["dedup"]["partition_resolution"],
            partitions=DEDUP_PARTITIONS,
        threads: 1
        resources:
            mem_mb=3000,
            runtime=lambda wc, input: int(20 + input.size_mb / 10),
        shell:
            '"$PYTHON" -m pvlake.partition split --staging {input.staging:q} --data-dir {params.data_dir:q}'
            " --dedup {params.rules:q} --partitions {params.partitions} --resolution {params.resolution}"
            " > {log:q} 2>&1"

    rule dedup_partition:
        """Duplicate pairs of one partition (candidate search and rules, pvlake.dedup)."""
        input:
            part=str(LAYOUT.dedup_partition("{part}")),
        output:
            pairs=str(LAYOUT.dedup_pairs("{part}")),
        log:
            str(LAYOUT.log("dedup", "partition_{part}")),
        wildcard_constraints:
            part=r"\d+",
        params:
            data_dir=config["data_dir"],
            rules=json.dumps(DEDUP_RULES, sort_keys=True),
            partitions=DEDUP_PARTITIONS,
        threads: 1
        resources:
            mem_mb=lambda wc, input: int(1000 + 30 * input.size_mb),
            runtime=lambda wc, input: int(10 + input.size_mb / 5),
        shell:
            '"$PYTHON" -m pvlake.partition pairs --data-dir {params.data_dir:q} --dedup {params.rules:q}'
            " --part {wildcards.part} --partitions {params.partitions} > {log:q} 2>&1"


rule dedup:
    """Exact and spatial duplicates across and within datasets, merged with provenance
    (in one process, or the merge of the partitions' pairs)."""
    input:
        notebook="notebooks/dedup.ipynb",
        staging=DEDUP_STAGING,
        partitions=[str(LAYOUT.dedup_records())] + [str(LAYOUT.dedup_pairs(p)) for p in range(DEDUP_PARTITIONS)]
        if DEDUP_PARTITIONS > 1 else [],
    output:
        parquet=str(LAYOUT.prepared_parquet()),
        report=str(LAYOUT.dedup_report()),
    log:
        notebook=str(LAYOUT.executed_notebook("dedup", "dedup")),
        text=str(LAYOUT.log("dedup", "dedup")),
    params:
        nb=lambda wc: notebook_params(
            manifest=config["manifest"],
            data_dir=config["data_dir"],
            dedup=DEDUP_RULES,
            partitions={"count": DEDUP_PARTITIONS, "h3_resolution": config["dedup"]["partition_resolution"]},
            ground_truth=ground_truth_path(),
        ),
    threads: 1
    resources:
        # one process holds every record; the merge of partitions only their columns
        mem_mb=lambda wc, input: int(1000 + (19 if DEDUP_PARTITIONS == 1 else 8) * input.size_mb),
        runtime=lambda wc, input: int(20 + input.size_mb / 5),
    shell:
        '"$PYTHON" -m pvlake.notebook {input.notebook:q} {log.notebook:q}'
        " --params {params.nb:q} --log {log.text:q}"
