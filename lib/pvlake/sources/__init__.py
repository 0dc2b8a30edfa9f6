"""Where label data come from and how they are read.

``labels`` finds the files a manifest entry selects and reads them, whatever the format;
repository clients that fetch datasets (Zenodo, Figshare, ScienceBase, GitHub, URLs) live
next to it, pvlib-``iotools`` style: ``get_*`` fetches, ``read_*`` parses.
"""

from .labels import LabelFile, SourceFrame, find_label_files, read_labels

__all__ = ["LabelFile", "SourceFrame", "find_label_files", "read_labels"]
