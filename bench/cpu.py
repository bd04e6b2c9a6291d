"""CPU and memory accounting from /proc, and the busy-machine check.

What is counted, and why:

- A process's CPU is utime + stime of /proc/PID/stat: every thread of it,
  user and kernel mode, including the system calls it makes (TUN and UDP
  reads and writes). Softirq work the kernel does on its behalf (veth
  delivery, TCP/IP receive) is charged to whichever task happened to be
  running, or to ksoftirqd, so it is not attributed exactly; the whole
  machine's busy time from /proc/stat is recorded beside it for that reason.
- The benchmark's own processes are this process and all its descendants
  (daemons, iperf3, ping, `ip`): the tree is rebuilt from the ppid links of
  each snapshot.
- "Other" CPU, the measure of a busy machine, is the CPU used between two
  snapshots by every process outside that tree that is not a kernel thread
  (kernel threads mostly do the benchmark's own network work), plus the CPU
  of children those processes reaped meanwhile (cutime + cstime: a test
  runner's short-lived commands), plus the hypervisor's steal time.

Every reader takes the /proc root as a parameter so tests can point it at
files they wrote.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
PF_KTHREAD = 0x00200000  # task flag of kernel threads (include/linux/sched.h)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIN_JUDGED_SECONDS = 1.0


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that the accounting needs (times in ticks)."""

    pid: int
    comm: str
    ppid: int
    flags: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    starttime: int

    @property
    def own_ticks(self) -> int:
        return self.utime + self.stime

    @property
    def reaped_ticks(self) -> int:
        return self.cutime + self.cstime

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def parse_stat(text: str) -> ProcStat:
    """Parse one /proc/PID/stat line.

    The command name is in parentheses and may itself contain spaces and
    parentheses, so the fields are split after the last ')'.
    """
    head, _, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    f = tail.split()
    # tail starts at field 3 (state); field n of proc(5) is f[n - 3].
    return ProcStat(
        pid=int(pid_text),
        comm=comm,
        ppid=int(f[1]),
        flags=int(f[6]),
        utime=int(f[11]),
        stime=int(f[12]),
        cutime=int(f[13]),
        cstime=int(f[14]),
        starttime=int(f[19]),
    )


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """The stat of `pid`, or None if it has exited."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


Snapshot = dict[int, ProcStat]


def snapshot(proc: Path = PROC) -> Snapshot:
    """The stat of every process now visible in `proc`."""
    result: Snapshot = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name), proc)
            if stat is not None:
                result[stat.pid] = stat
    return result


def descendants(processes: Iterable[Mapping[int, ProcStat]], root: int) -> set[int]:
    """`root` and every process whose ppid chain leads to it, in any of the snapshots."""
    children: dict[int, set[int]] = {}
    for snap in processes:
        for stat in snap.values():
            children.setdefault(stat.ppid, set()).add(stat.pid)
    found = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def thread_ticks(pid: int, proc: Path = PROC) -> dict[str, int]:
    """CPU ticks of each thread of `pid`, summed by thread name (for profiles)."""
    totals: dict[str, int] = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return totals
    for task in tasks:
        try:
            stat = parse_stat((task / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        totals[stat.comm] = totals.get(stat.comm, 0) + stat.own_ticks
    return totals


def rss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """VmRSS of `pid` in bytes, or None if it has exited."""
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class MachineTimes:
    """The aggregate `cpu` line of /proc/stat, in ticks."""

    busy: int  # user + nice + system + irq + softirq
    idle: int  # idle + iowait
    steal: int


def parse_machine_times(text: str) -> MachineTimes:
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "cpu":
            v = [int(x) for x in f[1:]] + [0] * 8
            user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
            return MachineTimes(user + nice + system + irq + softirq, idle + iowait, steal)
    raise ValueError("no aggregate cpu line in /proc/stat")


def machine_times(proc: Path = PROC) -> MachineTimes:
    return parse_machine_times((proc / "stat").read_text())


@dataclass(frozen=True)
class OtherUse:
    """CPU used outside the benchmark during one interval."""

    seconds: float  # wall-clock length of the interval
    cpu_seconds: float  # other processes' CPU plus steal, in CPU-seconds
    steal_seconds: float
    kernel_thread_seconds: float  # informational: mostly the benchmark's own softirq work
    top: list[tuple[int, str, float]] = field(default_factory=list)  # (pid, comm, CPU s)

    @property
    def cores(self) -> float:
        """Average number of cores the others kept busy.

        /proc times advance in whole ticks (10 ms), so one tick in a 5 ms
        interval would read as two busy cores: intervals shorter than
        MIN_JUDGED_SECONDS are judged as if they lasted that long.
        """
        return self.cpu_seconds / max(self.seconds, MIN_JUDGED_SECONDS)

    def describe(self) -> str:
        who = ", ".join(f"{comm}[{pid}] {cpu:.2f} s" for pid, comm, cpu in self.top[:5])
        return (
            f"{self.cores:.2f} cores used by other processes over {self.seconds:.1f} s"
            f" (steal {self.steal_seconds:.2f} s){': ' + who if who else ''}"
        )


def other_use(
    before: Snapshot,
    after: Snapshot,
    ours: set[int],
    seconds: float,
    steal_ticks: int = 0,
    ticks_per_second: int = CLOCK_TICKS,
    cpus: int | None = None,
) -> OtherUse:
    """CPU used between two snapshots by processes outside `ours`.

    A pid counts as the same process only if its start time is unchanged; a
    process absent from `before` started during the interval, so all its CPU
    counts. A process that both started and exited unseen is caught through
    its parent's reaped-children times. Those grow by a child's whole
    lifetime CPU when it is reaped; for processes seen in `before`, what they
    had used by then is subtracted, so a long job ending during the interval
    counts only for its last part. What remains errs towards "busy" (a
    process reparented before it exits), and is capped at `cpus` cores for
    the interval (judged as at least MIN_JUDGED_SECONDS long).
    """

    # CPU that processes gone since `before` had already used by then, by the
    # nearest ancestor still alive: their times reach its cutime/cstime
    # through the chain of reaping parents (a shell's job subshell, say).
    def survived(pid: int) -> bool:
        now = after.get(pid)
        return now is not None and now.starttime == before[pid].starttime

    used_before_exit: dict[int, int] = {}
    for pid, then in before.items():
        if survived(pid):
            continue
        ancestor = then.ppid
        while ancestor in before and not survived(ancestor):
            ancestor = before[ancestor].ppid
        if ancestor in before:
            used_before_exit[ancestor] = (
                used_before_exit.get(ancestor, 0) + then.own_ticks + then.reaped_ticks
            )
    per_process: list[tuple[int, str, float]] = []
    kernel = 0
    total = 0
    for pid, now in after.items():
        then = before.get(pid)
        if then is not None and then.starttime == now.starttime:
            reaped = now.reaped_ticks - then.reaped_ticks - used_before_exit.get(pid, 0)
            ticks = (now.own_ticks - then.own_ticks) + max(0, reaped)
        else:
            ticks = now.own_ticks + now.reaped_ticks
        if ticks <= 0:
            continue
        if now.kernel_thread:
            kernel += ticks
        elif pid not in ours:
            total += ticks
            per_process.append((pid, now.comm, ticks / ticks_per_second))
    per_process.sort(key=lambda item: item[2], reverse=True)
    cpu_total = (total + steal_ticks) / ticks_per_second
    if cpus is not None:
        cpu_total = min(cpu_total, cpus * max(seconds, MIN_JUDGED_SECONDS))
    return OtherUse(
        seconds=seconds,
        cpu_seconds=cpu_total,
        steal_seconds=steal_ticks / ticks_per_second,
        kernel_thread_seconds=kernel / ticks_per_second,
        top=per_process[:10],
    )


def too_busy(use: OtherUse, max_cores: float) -> bool:
    """Whether others used more than `max_cores` cores on average over the interval."""
    return use.cores > max_cores


class BusyMonitor:
    """Measures other processes' CPU between successive checkpoints."""

    def __init__(self, max_cores: float, proc: Path = PROC, root: int | None = None) -> None:
        self.max_cores = max_cores
        self.proc = proc
        self.root = os.getpid() if root is None else root
        self._reset()

    def _reset(self) -> None:
        self._snap = snapshot(self.proc)
        self._machine = machine_times(self.proc)
        self._time = time.monotonic()

    def restart(self) -> None:
        """Start a new interval now, forgetting the current one."""
        self._reset()

    def checkpoint(self) -> OtherUse:
        """Others' CPU since the previous checkpoint (or restart); starts the next interval."""
        before, machine_before, t0 = self._snap, self._machine, self._time
        self._reset()
        ours = descendants((before, self._snap), self.root)
        return other_use(
            before,
            self._snap,
            ours,
            self._time - t0,
            steal_ticks=self._machine.steal - machine_before.steal,
            cpus=os.cpu_count(),
        )

    def quiet_window(self, seconds: float) -> OtherUse:
        """Sleep `seconds` and report what others used meanwhile."""
        self.restart()
        time.sleep(seconds)
        return self.checkpoint()

    def wait_for_quiet(self, window: float, timeout: float) -> tuple[bool, OtherUse]:
        """Sample windows of `window` s until one is quiet or `timeout` s have passed."""
        deadline = time.monotonic() + timeout
        while True:
            use = self.quiet_window(window)
            if not too_busy(use, self.max_cores) or time.monotonic() + window > deadline:
                return not too_busy(use, self.max_cores), use


@dataclass(frozen=True)
class CpuSample:
    """CPU times of the tracked processes and of the whole machine at one moment."""

    when: float
    ticks: dict[str, int | None]  # role -> own ticks, None if the process is gone
    threads: dict[str, dict[str, int]]  # role -> thread name -> ticks
    machine: MachineTimes


def sample_cpu(pids: Mapping[str, int], proc: Path = PROC, threads: bool = False) -> CpuSample:
    """Read the own CPU of each role's process (and optionally of its threads)."""
    ticks: dict[str, int | None] = {}
    per_thread: dict[str, dict[str, int]] = {}
    for role, pid in pids.items():
        stat = read_stat(pid, proc)
        ticks[role] = None if stat is None else stat.own_ticks
        if threads:
            per_thread[role] = thread_ticks(pid, proc)
    return CpuSample(time.monotonic(), ticks, per_thread, machine_times(proc))


def cpu_seconds(
    before: CpuSample, after: CpuSample, ticks_per_second: int = CLOCK_TICKS
) -> dict[str, float]:
    """CPU seconds each role used between two samples, plus `machine` (busy
    CPU-seconds of all cores, from /proc/stat)."""
    result: dict[str, float] = {}
    for role, start in before.ticks.items():
        end = after.ticks.get(role)
        if start is not None and end is not None:
            result[role] = (end - start) / ticks_per_second
    result["machine"] = (after.machine.busy - before.machine.busy) / ticks_per_second
    return result


def thread_seconds(
    before: CpuSample, after: CpuSample, ticks_per_second: int = CLOCK_TICKS
) -> dict[str, dict[str, float]]:
    """Per role, CPU seconds of each thread name between two samples (busiest first)."""
    result: dict[str, dict[str, float]] = {}
    for role, threads in after.threads.items():
        start = before.threads.get(role, {})
        deltas = {
            name: (ticks - start.get(name, 0)) / ticks_per_second for name, ticks in threads.items()
        }
        result[role] = dict(sorted(deltas.items(), key=lambda kv: kv[1], reverse=True))
    return result
