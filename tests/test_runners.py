"""runner.kind picks the Prefect task runner that per-shard training is mapped over."""

import pytest

from tasks.runners import make_task_runner
from unlearnflow.config import RunnerConfig


@pytest.mark.parametrize("kind, cls_name", [("threads", "ThreadPoolTaskRunner"),
                                            ("processes", "ProcessPoolTaskRunner"),
                                            ("dask", "DaskTaskRunner")])
def test_each_kind_builds_its_runner(kind, cls_name):
    runner = make_task_runner(RunnerConfig(kind=kind, workers=3))
    assert type(runner).__name__ == cls_name


def test_dask_uses_the_given_scheduler_address():
    runner = make_task_runner(RunnerConfig(kind="dask", address="tcp://10.0.0.5:8786"))
    assert runner.address == "tcp://10.0.0.5:8786"


def test_threads_runner_gets_the_worker_count():
    assert make_task_runner(RunnerConfig(kind="threads", workers=3))._max_workers == 3
