"""The one exception a stage raises for bad input."""

from __future__ import annotations


class DatasetError(Exception):
    """Bad input for one dataset: names the dataset, the file and the reason.

    Parameters
    ----------
    dataset : str
        Manifest key of the dataset.
    file : str or None
        The offending file (path or archive member); None when the problem is not
        tied to one file (for example a filter that matches nothing).
    reason : str
        What is wrong, in words a researcher can act on.
    """

    def __init__(self, dataset: str, file: str | None, reason: str):
        self.dataset = dataset
        self.file = file
        self.reason = reason
        where = f" file {file}" if file else ""
        super().__init__(f"dataset {dataset!r}{where}: {reason}")
