"""The Prefect API a command's flows talk to: the configured server (PREFECT_API_URL), else
the local server kept between commands (``flows/local_server.py``), started by the first
command that needs it, with a start-up budget that holds on a busy 2-core machine and a line
saying what is being waited for; with ``UNLEARNFLOW_PREFECT_SERVER=temporary``, a temporary
server for this command only, as Prefect itself would start.

Prefect gives its temporary server 20 s by default; creating a fresh Prefect database takes
15-20 s on these machines, longer when the other core is busy, so a first run could die
with a traceback. ``ensure_prefect_api`` starts the same server Prefect would (its
``SubprocessASGIServer`` singleton, which Prefect then reuses) with
``UNLEARNFLOW_PREFECT_STARTUP_SECONDS`` (default ``DEFAULT_BUDGET``) and turns a failure
into one line.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from unlearnflow.errors import UnlearnflowError

DEFAULT_BUDGET = 180.0  # seconds; see bench/results/first_run.md for what a first run takes


class PrefectUnavailable(UnlearnflowError):
    """The temporary Prefect server did not come up in time."""


def startup_budget() -> float:
    raw = os.environ.get("UNLEARNFLOW_PREFECT_STARTUP_SECONDS", "")
    if not raw:
        return DEFAULT_BUDGET
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise PrefectUnavailable(f"UNLEARNFLOW_PREFECT_STARTUP_SECONDS = {raw!r} is invalid: expected seconds > 0")
    return value


SERVER_MODES = ("local", "temporary")


def server_mode() -> str:
    mode = os.environ.get("UNLEARNFLOW_PREFECT_SERVER", "local") or "local"
    if mode not in SERVER_MODES:
        raise PrefectUnavailable(f"UNLEARNFLOW_PREFECT_SERVER = {mode!r} is not one of: {', '.join(SERVER_MODES)}")
    return mode


@contextmanager
def prefect_api(notice):
    """The command's flows talk to a running API inside this block: the configured one, else
    the local server (started if none runs; ``flows/local_server.py``), else (mode
    ``temporary``) Prefect's temporary server. Yields the seconds a start took (None: none)."""
    import prefect.settings

    configured = os.environ.get("PREFECT_API_URL") or prefect.settings.PREFECT_API_URL.value()
    if configured or server_mode() == "temporary":
        yield ensure_prefect_api(notice)
        return
    from flows import local_server

    url, seconds = local_server.use(notice, startup_budget())
    os.environ["PREFECT_API_URL"] = url  # for processes this command starts
    try:
        with prefect.settings.temporary_settings(updates={prefect.settings.PREFECT_API_URL: url}):
            yield seconds
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def ensure_prefect_api(notice) -> float | None:
    """Start the temporary Prefect server unless an API is configured (then check that it
    answers) or already running. Returns the seconds it took to become healthy (None if
    nothing was started)."""
    import prefect.settings

    configured = os.environ.get("PREFECT_API_URL") or prefect.settings.PREFECT_API_URL.value()
    if configured:
        from tasks.workspace import require_server

        require_server(configured.rstrip("/") + "/health", "Prefect server", configured, "PREFECT_API_URL")
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if server.running:
        return None
    budget = startup_budget()
    database = Path(prefect.settings.PREFECT_HOME.value()) / "prefect.db"
    fresh = not database.exists()
    notice("starting the local Prefect server" + (" — first run: creating its database" if fresh else "")
           + f" (up to {budget:.0f}s; set PREFECT_API_URL to use a running server instead)")
    t0 = time.perf_counter()
    try:
        server.start(timeout=max(1, round(budget)))
    except Exception as e:  # Prefect raises RuntimeError with the server's whole output
        raise PrefectUnavailable(
            f"the local Prefect server did not become ready within {budget:.0f}s "
            f"({str(e).splitlines()[0][:160]}); run the command again, raise UNLEARNFLOW_PREFECT_STARTUP_SECONDS, "
            f"or start a server with `prefect server start` and set PREFECT_API_URL") from None
    seconds = time.perf_counter() - t0
    notice(f"Prefect server ready after {seconds:.1f}s")
    return seconds
