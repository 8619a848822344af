"""Where chunks run: the in-process executor answers like a Dask future (results in order, an
error re-raised by result(), a cancelled task never run)."""
from __future__ import annotations

import pytest

from pipeline.core.errors import InputError
from pipeline.process.executors import InlineExecutor


def test_tasks_run_in_submission_order_and_an_error_comes_back_from_result():
    ran = []

    def task(n):
        ran.append(n)
        if n == 2:
            raise InputError("tile 2 is unreadable")
        return n * 10

    ex = InlineExecutor()
    futures = [ex.submit(task, n) for n in (1, 2, 3)]
    ex.cancel(futures[2])
    assert ex.next_done().result() == 10
    with pytest.raises(InputError, match="tile 2"):
        ex.next_done().result()
    assert ran == [1, 2]                                    # the cancelled task never ran
    ex.cancel(futures[0])                                    # cancelling a finished task is harmless
    ex.close()
