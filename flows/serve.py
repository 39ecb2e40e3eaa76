"""Serve the request flow as a Prefect deployment woken by erasure events: with
``unlearn.method: sisa`` it is the exact erase flow; with an approximate method, the
fast path first (its version served within seconds), then the exact erasure that
supersedes it.

    prefect server start                                  # in one terminal
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    unlearnflow serve                                     # in another (keeps running)
    unlearnflow forget --subject s042 --no-wait           # file the request (ledger)
    prefect event emit unlearnflow.erasure.requested --resource-id unlearnflow.request.<id>

The event only wakes the flow: the ledger is the source of truth, so one run
carries out every pending request, however many events arrived.
"""

from __future__ import annotations

import os

from prefect import flow

from flows.approximate import approximate_flow
from flows.erase import erase_flow
from tasks.runners import make_task_runner
from tasks.workspace import Workspace
from unlearnflow.errors import UnlearnflowError
from unlearnflow.unlearning import is_exact

EVENT = "unlearnflow.erasure.requested"


class NoPrefectServer(UnlearnflowError):
    pass


@flow(name="unlearnflow-requests")
def requests_flow(workspace: str = ".") -> dict:
    """Every pending request: the fast path first when ``unlearn.method`` is an approximate
    method, then the exact erasure (which batches whatever else is pending by then)."""
    from flows.guard import writing

    with writing(workspace, "unlearnflow serve: request flow", signs=True) as (ws, params):  # lock; recover
        fast = None if is_exact(params.unlearn.method) else approximate_flow(workspace=str(ws.root), params=params)
        exact = erase_flow.with_options(task_runner=make_task_runner(params.runner))(workspace=str(ws.root),
                                                                                      params=params)
    return {"approximate": fast, "exact": exact}


def serve(workspace: str = ".", name: str = "erase-on-request", announce=print) -> None:
    from prefect.events import DeploymentEventTrigger

    if not os.environ.get("PREFECT_API_URL"):
        raise NoPrefectServer(
            "unlearnflow serve needs a running Prefect server for event triggers: start one with "
            "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    ws = Workspace(workspace)
    ws.check()
    trigger = DeploymentEventTrigger(
        name="erasure requested",
        expect={EVENT},
        parameters={"workspace": str(ws.root)},  # fixed: the event carries no personal data
    )
    method = ws.load_params().unlearn.method
    announce(f"serving the erase flow for {ws.root} on event '{EVENT}'"
             + ("" if is_exact(method) else f", after the fast path ({method})") + " (Ctrl-C to stop)")
    # limit=1: erase runs on one workspace never overlap (DVC and git need one writer); a run
    # woken while another works finds the ledger already handled and returns "idle".
    requests_flow.serve(name=name, triggers=[trigger], limit=1)
