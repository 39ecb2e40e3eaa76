"""Serve the request flow, woken by erasure events: with ``unlearn.method: sisa`` it is the
exact erase flow; with an approximate method, the fast path first (its version served within
seconds), then the exact erasure that supersedes it.

    prefect server start                                  # in one terminal
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    unlearnflow serve                                     # in another (keeps running)
    unlearnflow forget --subject s042 --no-wait           # file the request (ledger)
    prefect event emit unlearnflow.erasure.requested --resource-id unlearnflow.request.<id>

How it runs (bench/results/served.md says what each choice saves):
- the serving process subscribes to the server's event stream (a websocket) and runs the
  request flow itself, in this process, the moment an event arrives: torch, Prefect and
  MLflow are loaded once, a run pays no imports and no subprocess, and no deployment polls
  (Prefect's ``flow.serve`` would start each run in a new Python process, 10 s polling);
  every run is still a Prefect flow run on the server, with its task runs and logs;
- the ledger, not the event, is the source of truth: one run carries out every pending
  request and, before it ends, looks at the ledger again and takes whatever was filed while
  it worked (``drain``), so a request filed mid-run needs no second event;
- a request filed without any event is still found: the ledger is also looked at every
  ``--poll`` seconds (and when the event stream is lost).
"""

from __future__ import annotations

import asyncio
import os
import threading

from prefect import flow

from flows import waterfall
from flows.approximate import approximate_flow
from flows.erase import erase_flow
from tasks.runners import make_task_runner
from tasks.workspace import Workspace
from unlearnflow.errors import UnlearnflowError
from unlearnflow.unlearning import is_exact

EVENT = "unlearnflow.erasure.requested"
POLL_SECONDS = 30.0  # the ledger is looked at this often even without an event
MAX_BATCHES = 100  # per run: a run ends, and the next begins, after this many back-to-back batches


class NoPrefectServer(UnlearnflowError):
    pass


@flow(name="unlearnflow-requests")
def requests_flow(workspace: str = ".") -> dict:
    """Every pending request, in batches until the ledger holds none: the fast path first when
    ``unlearn.method`` is an approximate method, then the exact erasure (which batches whatever
    else is pending by then). Returns the last batch's results and every batch's."""
    from flows.guard import writing

    waterfall.start()  # this run's steps (a served process runs many)
    batches = []
    with writing(workspace, "unlearnflow serve: request flow", signs=True) as (ws, params):  # lock; recover
        while len(batches) < MAX_BATCHES:
            before = pending_ids(ws)
            fast = None if is_exact(params.unlearn.method) else approximate_flow(workspace=str(ws.root),
                                                                                 params=params)
            exact = erase_flow.with_options(task_runner=make_task_runner(params.runner))(workspace=str(ws.root),
                                                                                          params=params)
            batches.append({"approximate": fast, "exact": exact})
            after = pending_ids(ws)
            if exact["status"] == "idle" or not after or after == before:  # drained (or no progress to make)
                break
    return {**batches[-1], "batches": batches, "waterfall": waterfall.current().steps()}


def pending_ids(ws: Workspace) -> set[str]:
    return {r.request.request_id for r in ws.pending_requests()}


def has_work(ws: Workspace) -> bool:
    """Pending requests, or an interrupted operation to finish (cheap: no lock, no Prefect)."""
    return bool(ws.pending_requests()) or ws.journal().read() is not None


class Wakeup:
    """Set by each erasure event (a thread follows the server's event stream); the serving
    loop waits on it. ``connected`` says whether the stream is up now."""

    def __init__(self):
        self.event = threading.Event()
        self.connected = threading.Event()
        self.received = 0

    def follow(self) -> None:
        threading.Thread(target=lambda: asyncio.run(self._stream()), name="unlearnflow-events", daemon=True).start()

    async def _stream(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        while True:  # the subscriber reconnects by itself; this loop outlives a server restart too
            try:
                async with get_events_subscriber(filter=EventFilter(event=EventNameFilter(name=[EVENT])),
                                                 reconnection_attempts=1000) as subscriber:
                    self.connected.set()
                    async for _ in subscriber:
                        self.received += 1
                        self.event.set()
            except Exception:  # the server went away: the ledger poll carries on; try again
                pass
            self.connected.clear()
            self.event.set()  # look at the ledger: events may have been missed while disconnected
            await asyncio.sleep(2)


def serve(workspace: str = ".", announce=print, poll: float = POLL_SECONDS,
          stop: threading.Event | None = None) -> None:
    if not os.environ.get("PREFECT_API_URL"):
        raise NoPrefectServer(
            "unlearnflow serve needs a running Prefect server for its event stream and flow runs: start one with "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    ws = Workspace(workspace)
    ws.check()
    method = ws.load_params().unlearn.method
    wake = Wakeup()
    wake.follow()
    if not wake.connected.wait(30):
        raise NoPrefectServer(f"could not follow the event stream of the Prefect server at "
                              f"{os.environ['PREFECT_API_URL']} within 30 s; is it running?")
    announce(f"serving the erase flow for {ws.root} on event '{EVENT}'"
             + ("" if is_exact(method) else f", after the fast path ({method})")
             + f"; the ledger is also checked every {poll:g}s (Ctrl-C to stop)")
    stop = stop or threading.Event()
    while not stop.is_set():
        wake.event.clear()  # before looking: an event from now on wakes the next wait
        if has_work(ws):
            before = pending_ids(ws)
            try:
                result = requests_flow(workspace=str(ws.root))
            except Exception as e:  # the run failed (its log is on the server): say so, try again later
                first = (str(e).strip().splitlines() or [""])[0][:300]
                announce(f"run failed: {type(e).__name__}: {first}; trying again on the next event or in {poll:g}s")
                wake.event.wait(poll)
                continue
            batches = result["batches"]
            announce(f"run done: {len(batches)} batch(es): "
                     + ", ".join(f"{b['exact'].get('status')} ({len(b['exact'].get('requests', []))} request(s))"
                                 for b in batches))
            if pending_ids(ws) - before:
                continue  # filed after the run's last look at the ledger: at once
        wake.event.wait(poll)
