"""The way into a workspace for every command that writes to it.

    with writing(workspace, "unlearnflow erase") as (ws, params):
        ...

1. it is a workspace, params.yaml parses, its names are known (nothing written yet);
2. it is not a copy whose MLflow store writes into the original (``check_location``);
3. one writer at a time: the workspace lock (waits, saying for whom, or refuses with
   ``wait=False``; a lock of a dead process is free: the kernel dropped it); git's own
   lock files left by a killed commit are removed;
4. the Prefect API is up (``flows/prefect_api.py``: a temporary server with a start-up
   budget, unless PREFECT_API_URL names one, which must answer), and so is the MLflow
   tracking server if UNLEARNFLOW_TRACKING_URI names one;
5. an operation a crash interrupted is finished (erasure) or rolled back (fast path)
   first, with a one-line notice: the journal (``.unlearnflow/journal.json``) says which.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from flows.prefect_api import ensure_prefect_api
from tasks.workspace import Workspace
from unlearnflow.preflight import check_names


def notice(message: str) -> None:
    print(f"unlearnflow: {message}", file=sys.stderr, flush=True)


@contextmanager
def writing(workspace, command: str, wait: bool = True, params=None):
    """``params``: the command's parsed params.yaml, if it has them already (parsed once per command)."""
    ws = Workspace(workspace)
    ws.check()
    params = params or ws.load_params()
    check_names(params)
    ws.check_location()
    with ws.lock(command, wait=wait, notify=notice):
        from tasks.lineage import clear_stale_git_locks

        removed = clear_stale_git_locks(ws.root)
        if removed:
            notice(f"removed {', '.join(removed)}, left by a git commit that was killed")
        ensure_prefect_api(notice)  # every writing command runs flows: the API first, with a budget and a word
        ws.check_tracking_server()  # one that does not answer: one line now, before any work
        recover(ws, params)
        yield ws, params


def recover(ws: Workspace, params) -> dict | None:
    """Finish (erasure) or roll back (fast path) what the journal says was interrupted."""
    state = ws.journal().read()
    if state is None:
        return None
    done = state["steps"][-1] if state["steps"] else "nothing"
    if state["kind"] == "erase":
        from flows.erase import erase_flow
        from tasks.runners import make_task_runner

        notice(f"erasure {state['erasure_id']} was interrupted (last step done: {done}); finishing it first")
        result = erase_flow.with_options(task_runner=make_task_runner(params.runner))(workspace=str(ws.root),
                                                                                        params=params)
        notice(f"erasure {state['erasure_id']} finished: {result['status']}"
               + (f", version {result['mlflow']['version']}, certificate {result['certificate']}"
                  if result["status"] == "erased" else ""))
        return result
    from tasks.approximate import recover_interrupted

    outcome = recover_interrupted(ws, params, state)
    notice(f"fast path {state.get('approximation_id')} was interrupted (last step done: {done}); {outcome}")
    return {"status": "approximation recovered", "outcome": outcome}
