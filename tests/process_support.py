"""Looking at live processes through /proc (Linux): who a process's children are, and whether one still runs."""

from __future__ import annotations

from pathlib import Path


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def children_of(parent: int) -> set[int]:
    """Running (not zombie) processes whose parent is ``parent``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _state_and_parent(entry.name)) and info[1] == parent and info[0] != "Z":
            found.add(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an unreaped dead process counts as gone)."""
    info = _state_and_parent(pid)
    return info is not None and info[0] != "Z"
