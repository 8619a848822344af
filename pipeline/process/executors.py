"""Where the chunks of the nightly run are detected: in this process, or on a Dask cluster."""
from __future__ import annotations

import os
from collections import deque

from pipeline.core.errors import ConfigError, ModelError, PatrolError
from pipeline.detection.detectors import set_thread_budget


def _warm(detector) -> float:
    """Load the detector's model on this worker now (Dask ``client.run``)."""
    return detector.warm()


def _inference(detector) -> str:
    """How the detector runs on this worker (Dask ``client.run``)."""
    return detector.inference_text()


class _Task:
    def __init__(self, fn, args):
        self.fn, self.args, self._out, self._err = fn, args, None, None

    def run(self):
        try:
            self._out = self.fn(*self.args)
        except Exception as e:          # re-raised by result(), like a Dask future
            self._err = e

    def result(self):
        if self._err is not None:
            raise self._err
        return self._out


class InlineExecutor:
    """Runs tasks in this process, one at a time, in submission order."""
    description = "in-process"
    nworkers = 1

    def __init__(self):
        self._queue: deque[_Task] = deque()

    def submit(self, fn, *args, priority: int = 0):
        t = _Task(fn, args)
        self._queue.append(t)
        return t

    def next_done(self):
        t = self._queue.popleft()
        t.run()
        return t

    def cancel(self, t) -> None:
        try:
            self._queue.remove(t)
        except ValueError:
            pass

    def warm(self, detector) -> list[float]:
        return [detector.warm()]

    def inference(self, detector) -> dict[str, str]:
        return {"in-process": detector.inference_text()}

    def close(self) -> None:
        pass


class DaskExecutor:
    """Tasks on a Dask cluster: a LocalCluster of ``workers`` processes, or ``scheduler``'s."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None):
        try:
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise ConfigError("--workers/--scheduler need dask distributed; pip install "
                              "'dask[distributed]'") from None
        self._cluster = None
        try:
            if scheduler:
                self.client = Client(scheduler, timeout="20s")
                self.description = f"Dask scheduler {scheduler}"
            else:
                self._cluster = LocalCluster(n_workers=int(workers or 1), threads_per_worker=1, processes=True,
                                             dashboard_address=None, memory_limit=0)
                self.client = Client(self._cluster)
                self.description = f"local Dask cluster, {workers} worker processes"
        except OSError as e:
            raise ConfigError(f"cannot reach the Dask scheduler {scheduler or '(local)'} ({e}); check "
                              f"the address and that `dask scheduler` runs there") from None
        self.nworkers = max(1, sum(self.client.nthreads().values()))
        self._ac = as_completed()

    def submit(self, fn, *args, priority: int = 0):
        fut = self.client.submit(fn, *args, pure=False, priority=priority)
        self._ac.add(fut)
        return fut

    def next_done(self):
        return next(self._ac)

    def cancel(self, fut) -> None:
        fut.cancel()

    def share_cores(self) -> dict[str, int]:
        """Inference threads of each worker: its machine's cores shared out among the worker
        processes there, so N workers on one machine do not oversubscribe it."""
        from collections import Counter

        workers = self.client.scheduler_info()["workers"]
        cores = self.client.run(os.cpu_count)
        per_host = Counter(w["host"] for w in workers.values())
        budget = {a: max(1, int(cores.get(a) or 1) // per_host[w["host"]]) for a, w in workers.items()}
        for addr, n in budget.items():
            self.client.run(set_thread_budget, n, workers=[addr])
        return budget

    def warm(self, detector) -> list[float]:
        try:
            self.threads = self.share_cores()
            return [float(v) for v in self.client.run(_warm, detector).values()]
        except PatrolError:
            raise
        except Exception as e:
            raise ModelError(f"the Dask workers cannot load the detector {detector.version} ({e}); every worker "
                             f"needs the same path and `pipeline` installed") from None

    def inference(self, detector) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.client.run(_inference, detector).items()}

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()
