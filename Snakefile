# ice-mELT DuckLake: open PV label datasets to a reproducible research compendium.
# Stages run as parameterised notebooks (papermill); logic lives in lib/pvlake.
from snakemake.utils import min_version

min_version("9.0")


configfile: "workflow/config/config.yaml"


include: "workflow/rules/common.smk"


# Lake tables that stages publish (layer, name, file, CRS), appended by their rule
# files; the lake rule publishes the list as it is (pvlake.lake.declared_table).
LAKE_TABLES = []


include: "workflow/rules/download.smk"
include: "workflow/rules/harmonize.smk"
include: "workflow/rules/dedup.smk"
include: "workflow/rules/stac.smk"
include: "workflow/rules/cubes.smk"
include: "workflow/rules/context.smk"
include: "workflow/rules/energy.smk"
include: "workflow/rules/forecast.smk"
include: "workflow/rules/lake.smk"
# Last: the book renders every stage included above.
include: "workflow/rules/book.smk"


rule all:
    input:
        TARGETS,
    default_target: True
