"""ice-mELT DuckLake: a reproducible research compendium for open photovoltaic label data.

One module per pipeline stage (``harmonize``, ...) plus shared ones: ``manifest`` (the
dataset manifest and its file filters), ``sources`` (readers for the label formats),
``geo`` (geodesic measures, repair, H3), ``io`` (atomic GeoParquet/JSON writes) and
``layout`` (where every output lives under ``data_dir``).
"""

__version__ = "0.1.0"
