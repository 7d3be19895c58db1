"""Who gets the CPU while a :class:`~birdinfer.runtime.pipeline.Predictor` runs.

The front-end thread first: the threads a Predictor started for inference run at a lower scheduling priority
(``nice`` +:data:`INFERENCE_NICE`) than the thread that decodes and computes the front end beside them.

On 2 cores the front-end thread is the pipeline's bottleneck when it competes with OpenVINO's two streams for
them: BirdNET V2.4's INT8 network waited about a third of each run for its features, and the front end took
1.4× its time alone. With the inference threads at nice +5 the scheduler runs the front end whenever it is ready
and the networks take the rest (24 one-minute recordings, 2-core Zen 4, ``--precision fast``, two processes each
way, alternating, 4 rounds each, BLAS on one thread as below: best 5.80 / 5.36 s per hour of audio against
5.99 / 6.03 without, medians 6.02 / 5.72 against 6.25 / 6.15; the models waited 0.59 / 0.39 s for features per
run against 0.99 / 1.04). ``benchmarks/birdnet_variants.py`` has the figures against LiteRT.

Raising a thread's nice value needs no privilege, lowering it back does: the inference threads keep it for
the life of the process (they only ever compete with this process's front end and with other programs, to which
they now yield). Linux only (``/proc/self/task`` names the threads); elsewhere nothing changes.

And numpy's BLAS runs on the calling thread only while a Predictor runs (:class:`BlasThreads`): an OpenBLAS
product (e.g. the ``weighted_mean`` of the members, a mel product in the front end) wakes OpenBLAS's own worker
threads, which then spin waiting for more work on the cores OpenVINO and the front end need. Measured on BirdNET
V2.4 (one model, ``--precision fast``, 24 one-minute recordings, 2-core Zen 4, the two alternating in one
process, 4 rounds): best 5.31 s per hour of audio with BLAS on one thread against 6.52 with OpenBLAS's 2 (medians
5.77 / 6.58); a thread list during a run showed an OpenBLAS worker with 0.9 s of CPU time in a 2.8 s run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterable

__all__ = ["INFERENCE_NICE", "process_threads", "InferencePriority", "BlasThreads"]

log = logging.getLogger(__name__)

#: Nice steps the inference threads run below the front-end thread (5: weight 1024 against 335 in Linux's CFS;
#: 2 was measured slower, 10 no faster).
INFERENCE_NICE = 5


def process_threads() -> set[int]:
    """Native ids of this process's threads (Linux); empty where the OS does not list them."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except (OSError, ValueError):
        return set()


class InferencePriority:
    """Lowers the priority of the threads started after ``before`` was taken (:func:`process_threads`), except the
    ones given to :meth:`lower`, once each."""

    def __init__(self, before: set[int], step: int = INFERENCE_NICE):
        self.before = set(before)
        self.step = int(step)
        self.lowered: set[int] = set()

    def lower(self, keep: Iterable[int]) -> int:
        """Nice +``step`` for each new thread not in ``keep`` and not lowered before; returns how many were."""
        if not self.before or not hasattr(os, "setpriority"):
            return 0
        count = 0
        for tid in sorted(process_threads() - self.before - set(keep) - self.lowered):
            try:
                now = os.getpriority(os.PRIO_PROCESS, tid)
                os.setpriority(os.PRIO_PROCESS, tid, min(19, now + self.step))
            except OSError as e:  # the thread ended meanwhile, or the OS refuses: leave it
                log.debug("thread %d keeps its priority: %s", tid, e)
                continue
            self.lowered.add(tid)
            count += 1
        if count:
            log.debug("%d inference thread(s) at nice +%d below the front-end thread", count, self.step)
        return count


class BlasThreads:
    """``with blas.single():`` limits every BLAS library loaded in the process (OpenBLAS, MKL, ... as
    ``threadpoolctl`` finds them when this object is made) to the calling thread, and restores their thread counts
    on leaving."""

    def __init__(self):
        try:
            from threadpoolctl import ThreadpoolController

            self._controller = ThreadpoolController()
        except Exception as e:  # noqa: BLE001 - an unreadable library list must not stop inference
            log.warning("cannot limit numpy's BLAS threads (%s): its worker threads may slow inference", e)
            self._controller = None

    def single(self):
        if self._controller is None:
            return contextlib.nullcontext()
        return self._controller.limit(limits=1, user_api="blas")
