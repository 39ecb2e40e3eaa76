"""The way into a workspace for every command that writes to it.

    with writing(workspace, "unlearnflow erase") as (ws, params):
        ...

1. it is a workspace, params.yaml parses, its names are known (nothing written yet);
2. it is not a copy whose MLflow store writes into the original (``check_location``);
3. one writer at a time: the workspace lock (waits, saying for whom, or refuses with
   ``wait=False``; a lock of a dead process is free: the kernel dropped it); git's own
   lock files left by a killed commit are removed;
4. the ledger holds only intact lines: a damaged line git's committed copy holds is restored
   from it, a torn last line nothing depends on is set aside, other damage is refused
   (``unlearnflow.ledger.Ledger.repair``), each with a one-line notice;
5. the keys are the workspace's own (``lineage/keys.json``): the subject key its pseudonyms
   were made with and, for commands that sign certificates, the signing key; a missing or
   different key is refused before any work (``Workspace.secret_key``, ``signing_key``);
6. the Prefect API is up (``flows/prefect_api.py``: the local server kept between commands,
   started with a budget if none runs, unless PREFECT_API_URL names one, which must answer),
   and so is the MLflow tracking server if UNLEARNFLOW_TRACKING_URI names one;
7. an operation a crash interrupted is finished (erasure, key rotation) or rolled back (fast
   path) first, with a one-line notice: the journal (``.unlearnflow/journal.json``) says which.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from flows import waterfall
from flows.prefect_api import prefect_api
from tasks.workspace import Workspace
from unlearnflow.preflight import check_names


def notice(message: str) -> None:
    print(f"unlearnflow: {message}", file=sys.stderr, flush=True)


@contextmanager
def writing(workspace, command: str, wait: bool = True, params=None, signs: bool = False):
    """``params``: the command's parsed params.yaml, if it has them already (parsed once per command);
    ``signs``: the command writes certificates, so the signing key must be the workspace's too."""
    ws = Workspace(workspace)
    ws.check()
    params = params or ws.load_params()
    check_names(params)
    ws.check_location()
    with ws.lock(command, wait=wait, notify=notice):
        from tasks.lineage import clear_stale_git_locks

        waterfall.mark("lock")

        removed = clear_stale_git_locks(ws.root)
        if removed:
            notice(f"removed {', '.join(removed)}, left by a git commit that was killed")
        mend_ledger(ws)
        rotating = (ws.journal().read() or {}).get("kind") == "rotate"
        if not rotating:  # an interrupted rotation is finished first; it knows which keys hold
            check_keys(ws, params, signs)
        waterfall.mark("ledger_keys")
        with prefect_api(notice):  # every writing command runs flows: the API first, with a budget and a word
            waterfall.mark("prefect_api")
            ws.check_tracking_server()  # one that does not answer: one line now, before any work
            recover(ws, params)
            if rotating:
                check_keys(ws, params, signs)
            if signs:
                from tasks.transparency import ensure_log

                if ensure_log(ws, params):
                    notice("built the erasure log (lineage/log) from the certificates written before it")
            waterfall.mark("recover")
            yield ws, params


def check_keys(ws: Workspace, params, signs: bool) -> None:
    """Refuse a missing or wrong key now, before any work (an interrupted erasure signs too)."""
    ws.secret_key(params.data)
    if signs or (ws.journal().read() or {}).get("kind") == "erase":
        ws.signing_key()


def mend_ledger(ws: Workspace) -> None:
    """Restore damaged ledger lines from git, or set a torn last line aside, saying so; refuse
    (``LedgerDamaged``) what can be neither."""
    ledger = ws.ledger()
    ledger.repair()
    say_mended(ledger, notice)


def say_mended(ledger, say) -> None:
    if ledger.restored:
        say(f"{ledger.path.parent.name}/{ledger.path.name}: line(s) {', '.join(map(str, ledger.restored))} were "
            f"damaged or missing; restored from git's committed copy (HEAD)")
    if ledger.set_aside:
        say(f"the ledger ended in a torn line (a command stopped while filing, before it said 'filed'); it was set "
            f"aside in {ledger.set_aside}. If you were filing a request then, file it again")


def recover(ws: Workspace, params) -> dict | None:
    """Finish (erasure, key rotation) or roll back (fast path) what the journal says was interrupted."""
    state = ws.journal().read()
    if state is None:
        return None
    done = state["steps"][-1] if state["steps"] else "nothing"
    if state["kind"] == "rotate":
        from flows.keys import finish_rotation

        notice(f"a rotation of the {state['key']} key was interrupted (last step done: {done}); finishing it first")
        return finish_rotation(ws, params, state)
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
