"""Choosing how many images CROWN and alpha-CROWN bound at once, from the memory at hand.

Their memory grows with every layer's linear bounds, so a fixed chunk that fits one
model kills the process on another; on a CPU an out-of-memory kill cannot be caught and
halving the chunk never gets a chance. :func:`chunk_size` measures what one and two
images take (a probe run of the method), takes the memory available (free memory on a
GPU; on a CPU the smallest of free RAM, the cgroup's limit and the address-space limit
of the process) and returns the chunk that fits with a safety margin.
"""

from __future__ import annotations

import logging
import math
import resource
from collections.abc import Callable
from pathlib import Path

import torch

from certify.core.allocator import release_freed_memory

log = logging.getLogger(__name__)

# Only this share of the available memory is planned for: the estimate from two small
# probes misses allocator slack and the growth of other buffers.
USABLE_SHARE = 0.5
_PAGE = resource.getpagesize()


def available_memory(device: torch.device) -> int:
    """Bytes this process can still allocate on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    limits = [_meminfo("MemAvailable"), _cgroup_free()]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _status("VmSize"))
    known = [limit for limit in limits if limit is not None]
    # Without /proc (not Linux) nothing is known: the largest chunk is taken.
    return max(0, min(known)) if known else 2**62


def chunk_size(
    bound: Callable[[int], object], device: torch.device, largest: int, what: str
) -> int:
    """The number of images (1 to ``largest``) whose bounds fit in memory.

    ``bound(k)`` runs the method on ``k`` images; it is called for 1 image, and for 2
    where twice what one took still fits (a probe must not be what runs out of memory).
    """
    one = _peak_of(lambda: bound(1), device)
    if 2 * one > USABLE_SHARE * available_memory(device):
        log.info("%s: about %.0f MiB for one image: one image at a time", what, one / 2**20)
        return 1
    two = _peak_of(lambda: bound(2), device)
    per_image = max(two - one, two / 2, 1)
    fixed = max(one - per_image, 0)
    usable = USABLE_SHARE * available_memory(device) - fixed
    chunk = max(1, min(largest, math.floor(usable / per_image)))
    log.info(
        "%s: about %.0f MiB per image, %.0f MiB usable: %d images at a time",
        what, per_image / 2**20, usable / 2**20, chunk,
    )  # fmt: skip
    return chunk


def _peak_of(run: Callable[[], object], device: torch.device) -> float:
    """Bytes by which ``run`` raised the process's peak memory on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    # Freed memory still resident would serve the run without raising the peak, and the
    # probe would miss what the run needs.
    release_freed_memory()
    _reset_peak_rss()
    before = _status("VmHWM")
    run()
    return float(_status("VmHWM") - before)


def _reset_peak_rss() -> None:
    # Writing 5 sets the peak resident size (VmHWM) back to the current one (Linux 4.0+).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        log.debug("cannot reset the peak resident size; the probe over-estimates")


def _status(field: str) -> int:
    """A size from /proc/self/status, in bytes (0 where it cannot be read)."""
    return _kib_field(Path("/proc/self/status"), field) or 0


def _meminfo(field: str) -> int | None:
    return _kib_field(Path("/proc/meminfo"), field)


def _kib_field(path: Path, field: str) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _cgroup_free() -> int | None:
    """What the cgroup (v2) still allows, if it sets a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - current
