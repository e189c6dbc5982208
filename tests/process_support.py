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


def listening_port(process) -> int | None:
    """The TCP port that ``process`` or one of its children listens on (None while there is none)."""
    import psutil

    try:
        root = psutil.Process(process.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    for proc in family:
        try:
            sockets = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN and sock.laddr and sock.laddr.ip == "127.0.0.1":
                return sock.laddr.port
    return None
