"""The ``unlearnflow`` command: the user's entry point.

    unlearnflow init DIR        create a git + DVC workspace (params.yaml, dvc.yaml)
    unlearnflow train           run the Prefect training flow in the workspace
    unlearnflow forget ...      file an erasure request and carry it out (rectify: correct a label)
    unlearnflow serve           run the request flow on erasure events (in this process)
    unlearnflow server          the local Prefect server kept between commands: status | stop
    unlearnflow status          production model, shards and data version
    unlearnflow keys            the workspace's keys; `keys rotate subject|signing` rotates one
    unlearnflow ui              start the MLflow UI on the workspace's store
    unlearnflow stage NAME      one pipeline stage (what dvc.yaml's commands call)

This module parses the command line and dispatches: each command parses params.yaml once
(``_workspace``) and hands the values to the flows (``flows/``); what it prints is
``flows/report.py``'s; ``demo`` is ``flows/demo.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from flows import report, waterfall
from unlearnflow.errors import ConfigError

STAGES = ("prepare", "partition", "train", "aggregate", "evaluate")
FLOW_COMMANDS = ("train", "forget", "rectify", "erase", "demo", "audit", "serve")  # their imports take seconds


QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry (and no "database is locked" from it)
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "unlearnflow",  # our progress lines in the flow run's logs
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # "View run … at": stdout is for our report / --json
}


def quiet_telemetry() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("unlearnflow").setLevel(logging.INFO)  # per-stage progress lines


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (not the stream of when it was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def log_to_stderr() -> None:
    logger = logging.getLogger("unlearnflow")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


# ---- commands ---------------------------------------------------------------------------


def _workspace(args):
    """The command's workspace and its params.yaml, parsed once for the whole command."""
    from tasks.workspace import Workspace

    ws = Workspace(args.workspace)
    ws.check()
    params = ws.load_params()
    if args.command in FLOW_COMMANDS:  # they import the methods anyway: each method's settings checked now
        from unlearnflow.unlearning import check_settings, flat_notice

        check_settings(params.unlearn)
        notice = flat_notice(params.unlearn)
        if notice:
            print(f"warning: {notice}", file=sys.stderr)
    return ws, params


def _json(result) -> int:
    print(json.dumps(result, indent=1, default=str))
    return 0


def cmd_init(args) -> int:
    from tasks.new_workspace import create_workspace

    target = create_workspace(Path(args.dir), args.dataset, args.model)
    print(f"workspace ready: {target}\nnext: cd {target} && {report.invocation()} train")
    return 0


def cmd_train(args) -> int:
    from flows.train import run_train

    t0 = time.perf_counter()
    ws, params = _workspace(args)
    result = run_train(str(ws.root), commit=not args.no_commit, wait=not args.no_wait, params=params)
    if args.json:
        return _json(result)
    report.train(result, time.perf_counter() - t0)
    return 0


def cmd_forget(args) -> int:
    if not (args.subject or args.record or args.file):
        print("error: name at least one --subject, --record or --file", file=sys.stderr)
        return 2
    ws, params = _workspace(args)
    _file_request(ws, params, args, "forget")
    waterfall.mark("file_request")
    return 0 if args.no_wait else _fast_path_then_exact(ws, params, args)


def cmd_rectify(args) -> int:
    from tasks.requests import parse_feature, parse_label

    if args.region is None and args.label is None:
        print("error: give --label (a label correction) or --region (a feature request), or both", file=sys.stderr)
        return 2
    if args.region is None and (args.fill is not None or args.subject or args.file or args.all_records):
        print("error: --fill, --subject, --file and --all-records go with --region; a label correction "
              "names --record", file=sys.stderr)
        return 2
    if not (args.subject or args.record or args.file or args.all_records):
        print("error: name at least one --subject, --record or --file, or --all-records", file=sys.stderr)
        return 2
    if args.all_records and (args.subject or args.record or args.file):
        print("error: --all-records names every record; leave out --subject, --record and --file", file=sys.stderr)
        return 2
    ws, params = _workspace(args)
    feature = parse_feature(ws, params, args.region, args.fill) if args.region is not None else None
    label = parse_label(ws, params, args.label) if args.label is not None else None
    _file_request(ws, params, args, "rectify", label, feature=feature, all_records=args.all_records)
    return 0 if args.no_wait else _fast_path_then_exact(ws, params, args)


def cmd_erase(args) -> int:
    from unlearnflow.unlearning import check_method

    ws, params = _workspace(args)
    check_method(args.method or params.unlearn.method, params.train)
    return _fast_path_then_exact(ws, params, args)


def _file_request(ws, params, args, kind: str, label: int | None = None, feature=None,
                  all_records: bool = False) -> None:
    from flows.guard import say_mended
    from tasks.requests import file_request
    from unlearnflow.unlearning import check_method, is_exact

    method = args.method or params.unlearn.method
    check_method(method, params.train)  # before anything is filed
    selectors = {flag: getattr(args, flag, None) or () for flag in ("subject", "record", "file")}
    filed = file_request(ws, params, kind, subjects=selectors["subject"], records=selectors["record"],
                         files=selectors["file"], label=label, feature=feature, all_records=all_records,
                         signs=not args.no_wait and (is_exact(method) or args.exact == "now"))
    say_mended(filed.ledger, lambda message: print(f"warning: {message}", file=sys.stderr))
    print(f"request {filed.request_id} {'filed' if filed.new else 'was already filed (no second effect)'}"
          + (f" (it matches {filed.matched} record(s) in the current data)" if filed.matched else ""))
    if filed.matched == 0:
        named = ", ".join(f"--{flag} {v}" for flag, values in selectors.items() for v in values)
        print(f"warning: request {filed.request_id} matches no record in the current data (check the spelling of "
              f"{named}); it stays on file, and erasing it changes no model: it is recorded as unmatched",
              file=sys.stderr)


def _fast_path_then_exact(ws, params, args) -> int:
    """With an approximate method (--method or unlearn.method): serve its version first,
    then (unless --exact later) run the exact erasure that supersedes it."""
    from flows.erase import run_erase

    waterfall.mark("imports")  # torch, Prefect, MLflow, DVC's and our modules
    from unlearnflow.unlearning import is_exact

    def erase() -> dict:
        return run_erase(str(ws.root), commit=not args.no_commit, wait=not getattr(args, "busy_fail", False),
                         params=params)

    method = args.method or params.unlearn.method
    if is_exact(method):
        result = erase()
        if args.json:
            return _json(result)
        report.erase(result)
        return 0
    from flows.approximate import run_approximate

    fast = run_approximate(str(ws.root), method, commit=not args.no_commit, params=params)
    if args.exact == "later":
        if args.json:
            return _json(fast)
        report.approximate(fast)
        print("exact erasure queued: the requests stay pending until `unlearnflow erase` (or the served flow) runs")
        return 0
    if args.json:
        return _json({"approximate": fast, "exact": erase()})
    report.approximate(fast)
    print("\nnow the exact SISA erasure, which supersedes it:")
    report.erase(erase())
    return 0


def cmd_demo(args) -> int:
    from flows.demo import run_demo

    return run_demo(args.workspace, args.subject)


def cmd_audit(args) -> int:
    from flows.audit import run_audit

    ws, params = _workspace(args)
    result = run_audit(str(ws.root), args.version, args.reference, args.lira, params=params)
    if args.json:
        return _json(result)
    report.audit(result)
    return 0


def cmd_methods(args) -> int:
    from unlearnflow.unlearning import method_rows

    rows = method_rows()
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.markdown:
        print(report.methods_markdown(rows))
    else:
        report.methods(rows)
    return 0


def cmd_verify(args) -> int:
    from tasks.verification import verify

    ws, params = _workspace(args)
    if not (ws.root / "dvc.lock").is_file():
        raise ConfigError(f"nothing to verify in {ws.root}: it has never been trained (no dvc.lock); "
                          f"run `unlearnflow train` first")
    _interrupted_notice(ws)
    checks = verify(ws, params, retrain=args.retrain or args.retrain_all, retrain_all=args.retrain_all)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=1))
    else:
        report.checks(checks)
    return 0 if all(c.ok for c in checks) else 1


def cmd_receipt(args) -> int:
    from tasks import transparency

    ws, params = _workspace(args)
    selector = ("--subject", args.subject) if args.subject else ("--request", args.request) if args.request \
        else ("--file", args.file)
    found = transparency.find_requests(ws, params, subject=args.subject, request=args.request, file=args.file)
    if not found:
        raise ConfigError(f"no request on file for {selector[0]} {selector[1]}")
    if len(found) > 1:
        raise ConfigError(f"{len(found)} requests on file for {selector[0]} {selector[1]}: {', '.join(found)}; "
                          f"name one with --request")
    with ws.lock("unlearnflow receipt", notify=lambda m: print(m, file=sys.stderr)):  # it may build the log
        text = transparency.receipt(ws, params, found[0], args.since)
    if args.output:
        Path(args.output).write_text(text)
        print(f"receipt of request {found[0]} written to {args.output}; check it with: python receipt_verify.py "
              f"verify {args.output} --key \"$(unlearnflow log key)\"", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_log(args) -> int:
    from tasks import transparency

    ws, params = _workspace(args)
    if args.action == "key":
        print(transparency.verifier_key(ws, params))
        return 0
    log = transparency.erasure_log(ws)
    newest = log.newest_checkpoint()
    status = {"origin": log.origin() if log.exists() else None, "leaves": len(log.leaves()),
              "checkpoints": len(log.checkpoints()), "newest_checkpoint": str(newest) if newest else None,
              "verifier_key": transparency.verifier_key(ws, params)}
    if args.json:
        return _json(status)
    for k, v in status.items():
        print(f"{k:18s} {v}")
    return 0


def cmd_witness(args) -> int:
    from unlearnflow.receipt_verify import VerifyError
    from unlearnflow.witness import Witness, serve

    try:
        witness = Witness(Path(args.dir), args.name)
        for vkey in args.log:
            witness.follow(vkey)
    except (ValueError, VerifyError) as e:
        raise ConfigError(f"witness: {e}") from None
    if args.action == "key":
        print(witness.key.text)
        return 0
    if args.action == "follow":
        for log in witness.logs():
            print(f"follows {log['origin']} (cosigned up to size {log['size']})")
        return 0
    if not witness.logs():
        raise ConfigError("this witness follows no log yet: give it one with --log \"$(unlearnflow log key)\"")

    def ready(url: str) -> None:
        print(f"witness {witness.name} on {url}/add-checkpoint  (Ctrl-C to stop)\n  its key: {witness.key.text}\n"
              + "".join(f"  follows {log['origin']} (cosigned up to size {log['size']})\n" for log in witness.logs()),
              end="", flush=True)

    try:
        serve(witness, args.host, args.port, ready)
    except OSError as e:
        raise ConfigError(f"cannot serve the witness on {args.host}:{args.port}: {e.strerror}; pick another --port") \
            from None
    except KeyboardInterrupt:
        print("witness stopped")
    return 0


def cmd_keys(args) -> int:
    from flows import keys

    ws, params = _workspace(args)
    if args.action == "show":
        info = keys.describe(ws, params)
        if args.json:
            print(json.dumps(info, indent=1))
        else:
            report.keys(info)
        return 0 if info["subject"]["ok"] and info["signing"]["ok"] else 1
    if args.key is None:
        raise ConfigError("name the key to rotate: `unlearnflow keys rotate subject` or `unlearnflow keys rotate "
                          "signing`")
    if (ws.journal().read() or {}).get("kind") != "rotate":  # (an interrupted one is only finished)
        report.rotation_plan(args.key, keys.plan(ws, params, args.key), confirmed=args.yes)
    if not args.yes:
        return 0
    state = keys.rotate(str(ws.root), args.key, params, reason=args.reason or "")
    report.rotated(state)
    return 0


def cmd_lineage(args) -> int:
    from tasks.registry import version_history

    if args.version is not None and (not args.version.isdigit() or int(args.version) < 1):
        raise ConfigError(f"--version {args.version!r} is invalid: expected a version number (1, 2, …; "
                          f"`unlearnflow lineage` lists them)")
    ws, params = _workspace(args)
    name = params.tracking.registered_model
    history = version_history(ws, name, args.version)
    if args.version is not None and not any(h["version"] == args.version for h in history):
        known = [h["version"] for h in version_history(ws, name)]
        raise ConfigError(f"{name!r} has no version {args.version}; registered versions: "
                          f"{', '.join(sorted(known, key=int)) or 'none'}")
    if args.json:
        print(json.dumps(history, indent=1))
    elif not history:
        print("no registered model versions yet")
    else:
        report.lineage(history)
    return 0


def cmd_status(args) -> int:
    from tasks import lineage
    from tasks.registry import production_version

    ws, params = _workspace(args)
    _interrupted_notice(ws)
    info = {"workspace": str(ws.root), "dataset": params.data.dataset,
            "shards": params.partition.num_shards, "slices": params.partition.slices}
    if (ws.root / "dvc.lock").is_file():
        lock = lineage.lock_info(ws.root)
        info["data_version"] = lock["outs"].get("prepare", {}).get("data/prepared")
        info["dvc_lock_md5"] = lock["dvc_lock_md5"]
        info["constituents"] = {str(k): lock["outs"].get(f"train@{k}", {}).get(ws.layout.rel(ws.layout.model(k)))
                                for k in params.partition.shards}
        info["dvc_status_clean"] = lineage.dvc_status_clean(ws.root)[0]
    mv = production_version(ws, params.tracking.registered_model)
    info["production"] = None if mv is None else {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id,
                                                  **mv.tags}
    pending = [r.request.request_id for r in ws.pending_requests()]
    info["requests_pending_exact"] = pending
    info["requests_only_approximately_forgotten"] = [r for r in pending if r in ws.approximated_requests()]
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        report.status(info, mv, pending)
    return 0


def cmd_serve(args) -> int:
    from flows.serve import serve

    serve(args.workspace, announce=lambda msg: print(msg, flush=True), poll=args.poll)
    return 0


def cmd_server(args) -> int:
    from flows import local_server

    where = local_server.home()
    if args.action == "stop":
        stopped = local_server.stop(where)
        print(f"stopped the local Prefect server (pid {stopped['pid']}, {stopped['url']})" if stopped
              else f"no local Prefect server runs for {where}")
        return 0
    info = local_server.status(where)
    if args.json:
        print(json.dumps(info, indent=1))
    elif info is None:
        print(f"no local Prefect server runs for {where} (the next command that runs a flow starts one)")
    else:
        print(f"local Prefect server: {info['url']}/api, pid {info['pid']}, since {info['started_at']}, Prefect home "
              f"{info['home']}; stops after {info['idle_seconds']:g}s unused"
              + (f"; in use by pid {', '.join(map(str, info['users']))}" if info["users"] else ""))
    return 0


def cmd_ui(args) -> int:
    import socket

    ws, params = _workspace(args)
    if ws.remote_tracking:  # a tracking server already serves the UI
        print(f"this workspace tracks to {ws.tracking_uri} (UNLEARNFLOW_TRACKING_URI): open that address")
        return 0
    with socket.socket() as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise ConfigError(f"cannot serve the UI on {args.host}:{args.port}: {e.strerror}; "
                              f"pick another --port") from None
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", ws.tracking_uri,
           "--default-artifact-root", ws.artifact_root, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    base = f"http://{args.host}:{args.port}/"
    print(f"MLflow UI on {base}  (Ctrl-C to stop)")
    pages = _ui_pages(ws, params)
    for what, page in pages.items():
        print(f"  {what:34s} {base}{page}")
    if not pages:
        print(f"  nothing tracked yet: `{report.invocation()} train -C {args.workspace}` first")
    return _run_group(cmd)


def _ui_pages(ws, params) -> dict[str, str]:
    """Where to look first: the experiment's training runs (MLflow 3 opens an experiment on its
    GenAI overview unless the browser's sidebar switch says otherwise) and the production
    version's page, which opens on its lineage card."""
    from tasks.registry import production_version
    from tasks.store import client_for

    experiment = client_for(ws).get_experiment_by_name(params.tracking.experiment)
    mv = production_version(ws, params.tracking.registered_model)
    pages = {"training and erase runs": f"#/experiments/{experiment.experiment_id}/runs"} if experiment else {}
    if mv is not None:
        pages[f"production v{mv.version} and its lineage card"] = f"#/models/{mv.name}/versions/{mv.version}"
    return pages


def _run_group(cmd: list[str]) -> int:
    """Run ``cmd`` in a process group of its own (the MLflow server starts uvicorn and job
    workers) and, when this process is interrupted or terminated, stop the whole group."""
    import signal

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    proc = subprocess.Popen(cmd, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)  # the group outlives its leader while any member runs
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.5)  # let the members see the signal before checking the group again


def cmd_stage(args) -> int:
    from tasks.workspace import Workspace

    ws = Workspace(args.workspace)
    params = ws.load_params()
    layout = ws.layout
    log_to_stderr()
    if ws.journal().read() is not None:
        raise ConfigError("an erasure or fast path was interrupted in this workspace; run `unlearnflow erase` "
                          "to finish it before `dvc repro`")
    if args.name == "prepare":
        from flows.train import refuse_pending

        refuse_pending(ws)
    with ws.lock(f"unlearnflow stage {args.name}", notify=lambda m: print(m, file=sys.stderr)):
        out = _stage(args, ws, params, layout)
    if out is None:
        return 2
    print(json.dumps(out, default=str)[:2000])
    return 0


def _stage(args, ws, params, layout):
    from unlearnflow import stages
    from unlearnflow.progress import progress_callbacks

    if args.name == "prepare":
        out = stages.prepare(params.data, layout, ws.secret_key(params.data), ws.ledger().read(), ws.tombstones())
    elif args.name == "partition":
        out = stages.partition_stage(params.partition, layout)
    elif args.name == "train":
        if args.shard is None or args.shard not in params.partition.shards:
            print(f"error: --shard must be one of {list(params.partition.shards)}; got {args.shard}", file=sys.stderr)
            return None
        out = stages.train_stage(params.train, layout, args.shard, progress_callbacks())
    elif args.name == "aggregate":
        out = stages.aggregate_stage(params.aggregate, params.partition, layout)
    else:
        out = stages.evaluate_stage(layout, params.train.device)
    return out


def _interrupted_notice(ws) -> None:
    state = ws.journal().read()
    if state is not None:
        what = {"erase": f"erasure {state.get('erasure_id', '')}",
                "rotate": f"a rotation of the {state.get('key')} key"}.get(state["kind"], "a fast path")
        print(f"note: {what} was interrupted (last step done: {state['steps'][-1] if state['steps'] else 'none'}); "
              f"the next writing command (e.g. `unlearnflow erase`) finishes or rolls it back", file=sys.stderr)
    for problem in ws.ledger().problems():
        print(f"note: {problem}", file=sys.stderr)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 86400")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port; valid: 1-65535")
    return int(text)


# ---- parser ----------------------------------------------------------------------------


def _add_method_args(sp) -> None:
    sp.add_argument("--method", help="sisa (exact only) or an approximate method served first, then superseded "
                    "by the exact erasure (default: unlearn.method; `unlearnflow methods` lists them)")
    sp.add_argument("--exact", choices=("now", "later"), default="now",
                    help="after an approximate method: run the exact erasure now (default) or leave it queued")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unlearnflow",
        description="SISA training and machine unlearning with lineage: Prefect runs the pipeline, "
        "DVC records which data fed each constituent model, MLflow records runs and the served model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="A workspace is a git + DVC repository with params.yaml and dvc.yaml "
        "(this checkout is one; `unlearnflow init DIR` makes another).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_, fn, workspace=".", workspace_help="current directory"):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        if name != "init":
            sp.add_argument("-C", "--workspace", default=workspace, help=f"workspace directory (default: {workspace_help})")
        sp.add_argument("-v", "--verbose", action="store_true",
                        help="also show Prefect's and MLflow's own log lines (off by default: the report is ours)")
        return sp

    _pipeline_commands(add)
    _request_commands(add)
    _inspection_commands(add, sub)
    _transparency_commands(add)
    return p


def _pipeline_commands(add) -> None:
    sp = add("init", "create a new git + DVC workspace with default params.yaml and dvc.yaml", cmd_init)
    sp.add_argument("dir", help="directory to create (may exist, but must not hold params.yaml/dvc.yaml)")
    sp.add_argument("--dataset", help="data.dataset, e.g. mnist5k, digits, imagefolder:/path/to/images")
    sp.add_argument("--model", help="train.model: cnn, mlp, resnet18 or logreg")

    sp = add("train", "train (or resume) all constituents with the Prefect flow, record lineage, register the model", cmd_train)
    sp.add_argument("--no-commit", action="store_true", help="do not git-commit dvc.lock afterwards")
    sp.add_argument("--no-wait", action="store_true",
                    help="refuse instead of waiting when another command is writing to the workspace")
    sp.add_argument("--json", action="store_true", help="print the full result as JSON")


def _request_commands(add) -> None:
    sp = add("forget", "file an erasure request (right to be forgotten) and carry it out", cmd_forget)
    sp.add_argument("--subject", action="append", help="a person: all their records (repeatable)")
    sp.add_argument("--record", action="append", help="a record id (repeatable)")
    sp.add_argument("--file", action="append", help="a source file name, for image-folder datasets (repeatable)")
    sp.add_argument("--no-wait", action="store_true", help="only file the request; a later erase runs it")
    _add_method_args(sp)
    sp.add_argument("--no-commit", action="store_true", help="do not git-commit the new data version")
    sp.add_argument("--json", action="store_true", help="print the full result as JSON")

    sp = add("rectify", "file a label correction or a feature request (right to rectification) and retrain "
             "exactly", cmd_rectify)
    sp.add_argument("--record", action="append", help="a record id (repeatable)")
    sp.add_argument("--label", help="the corrected label: a class name or index")
    sp.add_argument("--region", metavar="X0,Y0,X1,Y1",
                    help="a feature request: fill this rectangle (pixels of the prepared images, end exclusive)")
    sp.add_argument("--fill", help="with --region: a number 0..255, 'mean' or 'blur' (default 0), computed "
                    "from the pixels outside the region")
    sp.add_argument("--subject", action="append", help="with --region: a person's records (repeatable)")
    sp.add_argument("--file", action="append", help="with --region: a source file name (repeatable)")
    sp.add_argument("--all-records", action="store_true", help="with --region: every record of the data")
    sp.add_argument("--no-wait", action="store_true", help="only file the request")
    _add_method_args(sp)
    sp.add_argument("--no-commit", action="store_true", help="do not git-commit the new data version")
    sp.add_argument("--json", action="store_true", help="print the full result as JSON")

    sp = add("erase", "carry out every pending request in the ledger as one batch", cmd_erase)
    sp.add_argument("--no-commit", action="store_true", help="do not git-commit the new data version")
    sp.add_argument("--no-wait", dest="busy_fail", action="store_true",
                    help="refuse instead of waiting when another command is writing to the workspace")
    _add_method_args(sp)
    sp.add_argument("--json", action="store_true", help="print the full result as JSON")

    sp = add("demo", "the main job: train if needed, erase one subject, summarise", cmd_demo,
             workspace="demo", workspace_help="./demo, created on first use")
    sp.add_argument("--subject", help="subject to forget (default: the first synthetic subject still in training)")


def _transparency_commands(add) -> None:
    sp = add("receipt", "write the receipt of an erasure for the person who asked (a C2SP tlog-proof); "
             "`unlearnflow receipt verify FILE --key VKEY` checks one (as receipt_verify.py does)", cmd_receipt)
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help="the subject the request named")
    who.add_argument("--request", help="a request id (r…)")
    who.add_argument("--file", help="a file name the request named")
    sp.add_argument("-o", "--output", help="write the receipt here (default: standard output)")
    sp.add_argument("--since", type=int, metavar="N",
                    help="add a consistency proof from the log of size N (a receipt the person holds)")

    sp = add("log", "the erasure log: `key` prints its verifier key (to publish); `status` its size and root",
             cmd_log)
    sp.add_argument("action", nargs="?", choices=("key", "status"), default="status")
    sp.add_argument("--json", action="store_true", help="machine-readable output (status)")


    sp = add("witness", "a witness for erasure logs (c2sp.org/tlog-witness), run by someone the operator does "
             "not control: `serve` answers POST /add-checkpoint; `key` prints its verifier key; `follow` trusts "
             "a log's key", cmd_witness)
    sp.add_argument("action", choices=("serve", "key", "follow"))
    sp.add_argument("--dir", required=True, help="the witness's own directory: its key and state")
    sp.add_argument("--name", help="its key name, e.g. auditor.example/w1 (required the first time)")
    sp.add_argument("--log", action="append", default=[], metavar="VKEY",
                    help="a log's verifier key to follow (`unlearnflow log key` prints it; repeatable)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=_port, default=8780, help="TCP port (default 8780)")


def _inspection_commands(add, sub) -> None:
    sp = add("serve", "run the erase flow (after the fast path, if unlearn.method is approximate) whenever the "
             "event 'unlearnflow.erasure.requested' arrives, in this process "
             "(needs `prefect server start` and PREFECT_API_URL)", cmd_serve)
    sp.add_argument("--poll", type=_seconds, default=30.0, metavar="SECONDS",
                    help="also look at the ledger this often, without an event (default 30)")

    sp = add("server", "the local Prefect server that commands keep between them (without PREFECT_API_URL): "
             "status or stop", cmd_server)
    sp.add_argument("action", nargs="?", choices=("status", "stop"), default="status")
    sp.add_argument("--json", action="store_true", help="machine-readable output (status)")

    sp = add("audit", "audit a model version against every record erased so far (a Prefect flow)", cmd_audit)
    sp.add_argument("--version", help="registered version to audit (default: production)")
    sp.add_argument("--reference", metavar="VERSION",
                    help="also audit this version (e.g. an exact erasure) and report the Avg Gap to it")
    sp.add_argument("--lira", type=int, metavar="K",
                    help="LiRA attack with K reference models for this audit (overrides audit.lira_references)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("methods", help="list the unlearning methods (unlearn.method in params.yaml)",
                        description="list the unlearning methods (unlearn.method in params.yaml)")
    sp.set_defaults(fn=cmd_methods)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")

    sp = add("verify", "check the erasure promises using only the workspace and MLflow (exit 1 on failure)", cmd_verify)
    sp.add_argument("--retrain", action="store_true",
                    help="also retrain the latest erasure's constituents from scratch and compare bitwise")
    sp.add_argument("--retrain-all", action="store_true", help="retrain and compare every constituent")
    sp.add_argument("--json", action="store_true")

    sp = add("keys", "show the workspace's keys (lineage/keys.json against what this machine holds), or rotate one",
             cmd_keys)
    sp.add_argument("action", nargs="?", choices=("show", "rotate"), default="show")
    sp.add_argument("key", nargs="?", choices=("subject", "signing"), help="the key to rotate")
    sp.add_argument("--yes", action="store_true", help="rotate (without it: only say what rotating costs)")
    sp.add_argument("--reason", help="why the key is rotated (recorded in a signing key's rotation entry)")
    sp.add_argument("--json", action="store_true", help="machine-readable output (show)")

    sp = add("lineage", "print the history of a model version (default: all versions, newest first)", cmd_lineage)
    sp.add_argument("--version", help="start from this version and go back")
    sp.add_argument("--json", action="store_true")

    sp = add("status", "show the production model version, shards and data version", cmd_status)
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = add("ui", "start the MLflow UI (tracking server) on the workspace's store", cmd_ui)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=_port, default=5000, help="TCP port, 1-65535 (default 5000)")

    sp = add("stage", "run one pipeline stage (dvc.yaml's commands call this)", cmd_stage)
    sp.add_argument("name", choices=STAGES)
    sp.add_argument("--shard", type=int, help="shard index, for the train stage")


def main(argv=None) -> int:
    from flows import logfile, waterfall

    waterfall.start(from_process_start=argv is None).mark("python")  # the interpreter and this module
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:2] == ["receipt", "verify"]:  # the offline verifier, exactly as a person runs it
        from unlearnflow import receipt_verify

        return receipt_verify.main(given[1:])
    quiet_telemetry()
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)  # commands without a workspace have no --verbose
    if not verbose and args.command != "serve" and "prefect" not in sys.modules:
        # Prefect and MLflow read their log settings when imported: Prefect's own lines (flow and
        # task runs, an error's tracebacks) go to a file named in the error line, if one comes, not
        # to the report; our progress lines still show. MLflow's registration prints are muted where
        # they happen (tasks.tracking). `serve` keeps them all: its runs are watched in Prefect's UI.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logfile.route()
    if verbose:
        os.environ["UNLEARNFLOW_VERBOSE"] = "1"  # tasks.tracking lets MLflow's own prints through
    if (args.command in FLOW_COMMANDS and not (args.command in ("forget", "rectify") and args.no_wait)) \
            or (args.command == "keys" and args.yes):
        print(f"unlearnflow {args.command}: loading torch, Prefect and MLflow …", file=sys.stderr, flush=True)
    from unlearnflow.errors import UnlearnflowError

    try:
        code = args.fn(args)
    except UnlearnflowError as e:  # raised before a flow or inside one: the same one line
        detail = getattr(e, "local_detail", "")
        log = logfile.logged()
        print(f"error: {e}" + (f" ({detail})" if detail else "")
              + (f" (Prefect's log of the run: {log})" if log else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing acknowledged is lost; the next command that writes to the workspace "
              "finishes or rolls back what was under way", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an environment problem: one line here, the traceback in a file
        return _unexpected(e)
    logfile.discard()  # nothing failed: Prefect's warnings, if any, are not worth a file
    return code


def _unexpected(e: Exception) -> int:
    import traceback

    from flows import logfile

    path = logfile.append("".join(traceback.format_exception(e)))
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(f"error: {type(e).__name__}: {first[:300]} (traceback in {path})", file=sys.stderr)
    return 1


def entry() -> None:
    """The ``unlearnflow`` console script (and ``python -m flows.cli``): ``main()``, then every
    exit handler the libraries registered (Prefect drains its log and event workers there),
    then ``os._exit``. What that skips is the interpreter's teardown of torch's, MLflow's and
    Prefect's modules: 1.9 s after a ``forget`` that a finished command does not need
    (bench/results/overhead.md). A command that raised out of ``main`` (argparse's exit 2, a
    crash) leaves the ordinary way. Tests call ``main`` itself, in their own process."""
    import atexit

    code: list[int] = []

    def leave() -> None:  # registered first, so it runs after every handler registered later
        if not code:
            return
        logging.shutdown()  # its own handler was registered before this one: it would not run
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said to it
                pass
        os._exit(code[0])

    atexit.register(leave)
    code.append(main() or 0)
    sys.exit(code[0])


if __name__ == "__main__":
    entry()
