"""A local Prefect API server kept between commands, so that a command does not pay for
starting one (about 4 s each; bench/results/overhead.md).

Without ``PREFECT_API_URL``, the first writing command starts this server in the background
(its own process, its own session: a kill -9 of the command leaves it up) on Prefect's home
(``$PREFECT_HOME``, default ``~/.prefect``: one server per home, shared by every workspace
that uses it); later commands find it (``$PREFECT_HOME/unlearnflow-server.json``) and use it.
It stops by itself once no command has used it for ``UNLEARNFLOW_SERVER_IDLE_SECONDS``
(default 900) and none is running, or with ``unlearnflow server stop``.
``UNLEARNFLOW_PREFECT_SERVER=temporary`` brings back Prefect's own behaviour: a temporary
server per command.

    unlearnflow server status     # running? where, since when, used by which commands
    unlearnflow server stop

Run as ``python -m flows.local_server --home DIR --port N --idle S``: the server itself
(uvicorn with Prefect's API app, as Prefect's temporary server runs it), and a watchdog
thread that ends it when idle.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

DEFAULT_IDLE_SECONDS = 900.0
STATE = "unlearnflow-server.json"


def home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser().resolve()


def idle_seconds() -> float:
    raw = os.environ.get("UNLEARNFLOW_SERVER_IDLE_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_IDLE_SECONDS
    except ValueError:
        value = -1
    if value <= 0:
        from unlearnflow.errors import ConfigError

        raise ConfigError(f"UNLEARNFLOW_SERVER_IDLE_SECONDS = {raw!r} is invalid: expected seconds > 0")
    return value


def _users(where: Path) -> Path:
    return where / "unlearnflow-server.users"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/api/health", timeout=timeout).status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def status(where: Path | None = None) -> dict | None:
    """The running server of this Prefect home ({pid, url, started_at, idle_seconds, users}), or None."""
    where = where or home()
    try:
        state = json.loads((where / STATE).read_text())
    except (OSError, ValueError):
        return None
    if not _alive(state["pid"]) or not healthy(state["url"]):
        return None
    users = []
    for f in sorted(_users(where).glob("*")) if _users(where).is_dir() else []:
        if f.name.isdigit() and _alive(int(f.name)):
            users.append(int(f.name))
    return {**state, "users": users}


@contextmanager
def _start_lock(where: Path):
    """One command at a time decides whether to start the server (two would start two)."""
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "unlearnflow-server.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def use(notice, budget: float) -> tuple[str, float | None]:
    """The URL of this Prefect home's local server, started if none runs; this process is
    recorded as a user until it exits. Returns (api url, seconds it took to start or None)."""
    where = home()
    with _start_lock(where):
        running = status(where)
        started = None
        if running is None:
            started = _start(where, notice, budget)
            running = status(where)
            if running is None:
                raise _unavailable(f"the local Prefect server started but does not answer (its log: "
                                   f"{where / 'unlearnflow-server.log'})")
        _users(where).mkdir(exist_ok=True)
        (_users(where) / str(os.getpid())).touch()
    return running["url"] + "/api", started


def _unavailable(message: str):
    from flows.prefect_api import PrefectUnavailable

    return PrefectUnavailable(message)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(where: Path, notice, budget: float) -> float:
    fresh = not (where / "prefect.db").exists()
    notice("starting the local Prefect server, kept for later commands (`unlearnflow server stop` stops it)"
           + (" — first run: creating its database" if fresh else "") + f" (up to {budget:.0f}s)")
    port = _free_port()
    (where / STATE).unlink(missing_ok=True)
    log = open(where / "unlearnflow-server.log", "ab")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flows.local_server", "--home", str(where), "--port", str(port),
                             "--idle", str(idle_seconds())], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, cwd=str(where),
                            env={**os.environ, "PYTHONPATH": _code_path()})
    url = f"http://127.0.0.1:{port}"
    while not (healthy(url, 1.0) and (where / STATE).exists()):
        if proc.poll() is not None:
            raise _unavailable(f"the local Prefect server exited at start (exit {proc.returncode}); its log: "
                               f"{where / 'unlearnflow-server.log'}")
        if time.perf_counter() - t0 > budget:
            proc.terminate()
            raise _unavailable(f"the local Prefect server did not become ready within {budget:.0f}s; run the "
                               f"command again, raise UNLEARNFLOW_PREFECT_STARTUP_SECONDS, or start a server with "
                               f"`prefect server start` and set PREFECT_API_URL")
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    notice(f"Prefect server ready after {seconds:.1f}s")
    return seconds


def _code_path() -> str:
    """The server imports this module (``-m flows.local_server``) from the command's own code."""
    here = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def stop(where: Path | None = None, timeout: float = 15.0) -> dict | None:
    """Stop this Prefect home's server; returns what was running (None: nothing was)."""
    where = where or home()
    try:
        state = json.loads((where / STATE).read_text())
    except (OSError, ValueError):
        return None
    pid = state["pid"]
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    (where / STATE).unlink(missing_ok=True)
    return state


# ---- the server process ------------------------------------------------------------------


def _serve(where: Path, port: int, idle: float) -> None:
    import uvicorn

    os.environ.update({"PREFECT_HOME": str(where), "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                       "PREFECT__SERVER_FINAL": "1"})
    os.environ.pop("PREFECT_API_URL", None)
    server = uvicorn.Server(uvicorn.Config("prefect.server.api.server:create_app", factory=True, host="127.0.0.1",
                                           port=port, log_level="error", lifespan="on"))
    state = {"pid": os.getpid(), "url": f"http://127.0.0.1:{port}", "port": port, "home": str(where),
             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "idle_seconds": idle}
    tmp = where / f"{STATE}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, where / STATE)
    threading.Thread(target=_watchdog, args=(server, where, idle), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        try:
            if json.loads((where / STATE).read_text())["pid"] == os.getpid():
                (where / STATE).unlink()
        except (OSError, ValueError, KeyError):
            pass


def _watchdog(server, where: Path, idle: float) -> None:
    """End the server once no command uses it and none has for ``idle`` seconds."""
    last_used = time.time()
    while not server.should_exit:
        time.sleep(min(5.0, idle / 4))
        if not server.started:  # still starting (a first run creates its database): not idle yet
            last_used = time.time()
            continue
        users = _users(where)
        for f in list(users.glob("*")) if users.is_dir() else []:
            if f.name.isdigit() and _alive(int(f.name)):
                last_used = time.time()
            else:  # a command that ended (or was killed): it used the server until now
                last_used = max(last_used, time.time())
                f.unlink(missing_ok=True)
        if time.time() - last_used > idle:
            server.should_exit = True


def main() -> None:
    ap = argparse.ArgumentParser(description="the local Prefect server (started by unlearnflow commands)")
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE_SECONDS)
    args = ap.parse_args()
    _serve(args.home, args.port, args.idle)


if __name__ == "__main__":
    main()
