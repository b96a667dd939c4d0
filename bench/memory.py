"""Memory of processes, read from Linux's ``/proc``.

``/proc/<pid>/smaps_rollup`` sums every mapping of a process. RSS counts each
resident page in full, and PSS divides a shared page among the processes that
map it. USS (Private_Clean + Private_Dirty) is the memory only this process
uses, which stopping it frees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROC = Path("/proc")
TORCH_LIBRARY = "libtorch"


@dataclass(frozen=True)
class MemoryUsage:
    """Resident memory of one process, in KiB."""

    rss_kib: int
    pss_kib: int
    uss_kib: int

    def __add__(self, other: MemoryUsage) -> MemoryUsage:
        return MemoryUsage(
            self.rss_kib + other.rss_kib,
            self.pss_kib + other.pss_kib,
            self.uss_kib + other.uss_kib,
        )

    def peak(self, other: MemoryUsage) -> MemoryUsage:
        """Return the field-wise maximum of two samples."""
        return MemoryUsage(
            max(self.rss_kib, other.rss_kib),
            max(self.pss_kib, other.pss_kib),
            max(self.uss_kib, other.uss_kib),
        )


def parse_smaps_rollup(text: str) -> MemoryUsage:
    """Parse the text of ``/proc/<pid>/smaps_rollup``.

    Raises ValueError when a field the result needs is missing.
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    needed = ("Rss", "Pss", "Private_Clean", "Private_Dirty")
    missing = [name for name in needed if name not in fields]
    if missing:
        raise ValueError(
            f"smaps_rollup text lacks the fields {', '.join(missing)}; "
            "it needs Linux 4.14 or later."
        )
    return MemoryUsage(
        rss_kib=fields["Rss"],
        pss_kib=fields["Pss"],
        uss_kib=fields["Private_Clean"] + fields["Private_Dirty"],
    )


def read_memory(pid: int) -> MemoryUsage | None:
    """Return the memory of a process, or None when it has exited."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return parse_smaps_rollup(text)


def maps_library(pid: int, library: str = TORCH_LIBRARY) -> bool | None:
    """Return whether a process maps a shared library whose name has ``library``.

    Returns None when the process has exited.
    """
    try:
        text = (PROC / str(pid) / "maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return mapped_library(text, library)


def mapped_library(maps_text: str, library: str) -> bool:
    """Return whether the text of ``/proc/<pid>/maps`` maps ``library``."""
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and library in Path(parts[5]).name:
            return True
    return False


def command_line(pid: int) -> str:
    """Return the command line of a process, or an empty string."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
