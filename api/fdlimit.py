"""Room for many open connections: the process's open-file limit, raised where it is low."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

#: The soft limit asked for when the hard limit is unlimited (or higher): far past any burst the
#: API admits (``MODELYARD_API_CONNECTIONS``), far below what would cost the kernel anything.
TARGET = 65536


def raise_open_files_limit(target: int = TARGET) -> int:
    """Raise ``RLIMIT_NOFILE``'s soft limit towards ``target`` (never past the hard limit, never
    lower); the soft limit in force afterwards.

    Many systems start processes at 1024 open files. Each client connection of the API is one, so a
    burst of a thousand clients would otherwise fail in ``accept`` or in opening a Redis connection.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, wanted, exc)
            return soft
        log.info("raised the open-files limit from %d to %d", soft, wanted)
        return wanted
    return soft
