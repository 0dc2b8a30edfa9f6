"""Where label data come from and how they are read.

``labels`` finds the files a manifest entry selects and reads them, whatever the format;
``repositories`` holds the clients that list a dataset's files (Zenodo, Figshare,
ScienceBase, GitHub, URLs), pvlib-``iotools`` style: ``get_*`` asks the service, ``read_*``
parses its answer; ``http`` downloads (resumed, verified) and ``archives`` extracts safely.
"""

from .labels import LabelFile, SourceFrame, find_label_files, read_labels
from .repositories import Endpoints, Record, RemoteFile, get_record

__all__ = [
    "LabelFile", "SourceFrame", "find_label_files", "read_labels",
    "Endpoints", "Record", "RemoteFile", "get_record",
]
