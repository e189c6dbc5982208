"""Hostile inputs shared by the security tests."""

from __future__ import annotations

import pathlib


class Planted:
    """Unpickling this creates the file ``marker``: if the file appears, loading ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))
