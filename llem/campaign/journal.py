"""Which SQLite journal mode the campaign state can use where it lives.

WAL keeps its index in shared memory (a `-shm` file mapped by every connection), which network file
systems do not share reliably: on NFS, Lustre, GPFS and the like a WAL database can be corrupted or
refuse to open. The classic rollback journal (DELETE) needs only file locks, and the state has one
writer (the orchestrator holding the campaign lock), so on those file systems it is the safe mode.
"""

from __future__ import annotations

import os
from pathlib import Path

# Mount types (as /proc/mounts names them) whose files other hosts may share.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "glusterfs", "fuse.glusterfs", "ceph",
    "fuse.ceph", "cephfs", "9p", "afs", "fuse.sshfs", "panfs", "ocfs2", "gfs2", "wekafs", "fuse.juicefs",
})
MOUNTS = Path("/proc/self/mounts")


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system `path` is on (the longest mount point above it), or None if unknown."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def journal_mode(directory: Path, mounts: str | None = None) -> str:
    """WAL on a local file system; DELETE (the rollback journal) on a network file system."""
    return "DELETE" if filesystem_type(directory, mounts) in NETWORK_FILESYSTEMS else "WAL"
