"""What the host did with this machine's CPUs during a measurement: how busy they were, and how much it took away.

These machines are shared. A hypervisor that runs another tenant instead of our vCPU shows as *steal* in
``/proc/stat``; everything here stalls meanwhile. A time-compressed replay multiplies every stall (at 20x a 50 ms
stall is a trace second in which the provider's freed threads wait), so a live figure is read with its run's steal.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class HostCpu:
    """Shares of the CPUs' time over the measurement, in percent."""

    busy_pct: float  # user, nice, system, interrupts
    steal_pct: float  # taken by the hypervisor for someone else

    def __str__(self) -> str:
        return f"busy {self.busy_pct:.0f} %, steal {self.steal_pct:.0f} %"


class CpuWatch:
    """Started at construction; :meth:`read` gives the shares since then."""

    def __init__(self) -> None:
        self._start = psutil.cpu_times()

    def read(self) -> HostCpu:
        end = psutil.cpu_times()
        # guest time is counted in user and nice already
        fields = [name for name in end._fields if name not in ("guest", "guest_nice")]
        delta = {name: getattr(end, name) - getattr(self._start, name) for name in fields}
        total = sum(delta.values()) or 1.0
        idle = delta.get("idle", 0.0) + delta.get("iowait", 0.0)
        steal = delta.get("steal", 0.0)
        busy = total - idle - steal
        return HostCpu(busy_pct=100.0 * busy / total, steal_pct=100.0 * steal / total)
