"""Progress lines for long training, attached to the loop through ``Callbacks``.

Logs to the ``unlearnflow`` logger; the CLI prints it, and Prefect forwards it to
the flow run's logs (``PREFECT_LOGGING_EXTRA_LOGGERS=unlearnflow``).
"""

from __future__ import annotations

import logging

from unlearnflow.training import Callbacks

log = logging.getLogger("unlearnflow")


def _on_start(shard, resumed_from, num_stages):
    if resumed_from == num_stages - 1:
        log.info("shard %d: all %d slice stages reused from checkpoints", shard, num_stages)
    elif resumed_from >= 0:
        log.info("shard %d: resuming from the checkpoint of stage %d/%d", shard, resumed_from + 1, num_stages)
    else:
        log.info("shard %d: training %d slice stages from scratch", shard, num_stages)


def _on_epoch_end(shard, stage, epoch, epochs, loss, records):
    if epoch == epochs - 1:
        log.info("shard %d: stage %d done (%d records, %d epochs, loss %.4f)", shard, stage + 1, records, epochs, loss)


def progress_callbacks() -> Callbacks:
    """One line when a shard starts, one per finished slice stage, one at the end."""
    cb = Callbacks()
    cb.add("on_start", _on_start)
    cb.add("on_epoch_end", _on_epoch_end)
    cb.add("on_end", lambda shard, seconds, trained_stages: log.info("shard %d: finished in %.1fs", shard, seconds))
    return cb
