"""The workers' footprint: each one's RSS and CPU sampled over a window, idle or under load."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psutil

# --- sampling ----------------------------------------------------------------------------


@dataclass
class ProcessSample:
    """CPU and memory of one worker over a window."""

    cpu_percent: float  # average over the window (100 = one core)
    cpu_peak_percent: float  # the highest of the sub-intervals
    cpu_seconds: float
    rss_mb_max: float
    rss_mb_mean: float
    uss_mb: float  # memory unique to the process (not shared libraries), at the end
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


class FootprintSampler:
    """Samples each worker's RSS and CPU every ``interval`` seconds, in a daemon thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        self.interval = interval
        self.processes = {step: psutil.Process(pid) for step, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-footprint", daemon=True)
        self._rss: dict[str, list[float]] = {step: [] for step in pids}
        self._cpu: dict[str, list[float]] = {step: [] for step in pids}
        self._start_cpu: dict[str, float] = {}
        self._started = 0.0
        self.result: dict[str, ProcessSample] = {}

    @staticmethod
    def _cpu_seconds(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> FootprintSampler:
        self._started = time.monotonic()
        for step, process in self.processes.items():
            self._start_cpu[step] = self._cpu_seconds(process)
            process.cpu_percent(None)  # primes the per-interval reading
            self._rss[step].append(process.memory_info().rss / 2**20)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for step, process in self.processes.items():
            try:
                self._cpu[step].append(process.cpu_percent(None))
                self._rss[step].append(process.memory_info().rss / 2**20)
            except psutil.Error:
                continue

    def stop(self) -> dict[str, ProcessSample]:
        self._stop.set()
        self._thread.join()
        self._sample()
        seconds = time.monotonic() - self._started
        for step, process in self.processes.items():
            try:
                used = self._cpu_seconds(process) - self._start_cpu[step]
                uss = float(process.memory_full_info().uss) / 2**20
            except psutil.Error:
                used = uss = float("nan")
            rss, cpu = self._rss[step], self._cpu[step]
            self.result[step] = ProcessSample(
                cpu_percent=100.0 * used / seconds if seconds > 0 else 0.0,
                cpu_peak_percent=max(cpu) if cpu else 0.0,
                cpu_seconds=used,
                rss_mb_max=max(rss),
                rss_mb_mean=sum(rss) / len(rss),
                uss_mb=uss,
                seconds=seconds,
            )
        return self.result


def sample_idle(pids: dict[str, int], seconds: float) -> dict[str, ProcessSample]:
    """The workers' footprint over ``seconds`` with no traffic."""
    sampler = FootprintSampler(pids).start()
    time.sleep(seconds)
    return sampler.stop()
