"""Indexing a catalog: read it, then load → segment → matte → embed → store every new or changed item.

Public API::

    from matcher.indexing import run_index, IndexReport, IndexLockedError, read_catalog

    report = run_index("products.jsonl", settings, workers=4)     # IndexReport(run_id=..., counts=...)

``catalog`` reads JSONL, CSV or a folder of images; ``item`` is the work on ONE item (the work item
and item result types, ``prepare_item``, ``store_outcomes``, ``tally``), shared by both executors;
``job`` runs a whole catalog (lock, plan, run records, the process pool, space activation);
``ray_runner`` is the optional Ray Data executor (``executor="ray"``).  ``matcher.service`` calls
``run_index`` for ``matcher index`` and ``matcher reindex``.
"""

from .catalog import read_catalog
from .job import EXECUTORS, IndexLockedError, IndexReport, MassRemovalError, run_index

__all__ = ["EXECUTORS", "IndexLockedError", "IndexReport", "MassRemovalError", "read_catalog", "run_index"]
