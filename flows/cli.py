"""The ``unlearnflow`` command: the user's entry point.

    unlearnflow init DIR        create a git + DVC workspace (params.yaml, dvc.yaml)
    unlearnflow train           run the Prefect training flow in the workspace
    unlearnflow forget ...      file an erasure request and carry it out (rectify: correct a label)
    unlearnflow serve           run the request flow on erasure events (Prefect deployment + trigger)
    unlearnflow status          production model, shards and data version
    unlearnflow ui              start the MLflow UI on the workspace's store
    unlearnflow stage NAME      one pipeline stage (what dvc.yaml's commands call)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from unlearnflow.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("prepare", "partition", "train", "aggregate", "evaluate")
FLOW_COMMANDS = ("train", "forget", "rectify", "erase", "demo", "audit", "serve")  # their imports take seconds
WORKSPACE_GITIGNORE = "/checkpoints/\n/mlflow.db\n/mlruns/\n/.unlearnflow/\n/ledger/*.lock\n__pycache__/\n"


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


def cmd_init(args) -> int:
    from unlearnflow.config import parse_params
    from unlearnflow.preflight import check_names

    target = Path(args.dir).resolve()
    if (target / "params.yaml").exists() or (target / "dvc.yaml").exists():
        print(f"error: {target} already holds params.yaml or dvc.yaml; not overwriting", file=sys.stderr)
        return 2
    text = (REPO_ROOT / "params.yaml").read_text()
    if args.dataset:
        text = re.sub(r"(?m)^(  dataset: ).*$", lambda m: m.group(1) + args.dataset, text, count=1)
    if args.model:
        text = re.sub(r"(?m)^(  model: ).*$", lambda m: m.group(1) + args.model, text, count=1)
    import yaml

    check_names(parse_params(yaml.safe_load(text)))  # unknown dataset/model: fail before creating anything
    target.mkdir(parents=True, exist_ok=True)
    (target / "params.yaml").write_text(text)
    from unlearnflow.ledger import Ledger
    from unlearnflow.layout import Layout

    Ledger(Layout(target).ledger).ensure()
    shutil.copy(REPO_ROOT / "dvc.yaml", target / "dvc.yaml")
    with open(target / ".gitignore", "a") as f:
        f.write(WORKSPACE_GITIGNORE)
    from tasks.lineage import GIT_IDENTITY, dvc, git

    if not (target / ".git").exists():
        git(target, "init", "--quiet")
    if not (target / ".dvc").exists():
        dvc(target, "init", "--quiet")
        dvc(target, "config", "core.analytics", "false")
    git(target, "add", "params.yaml", "dvc.yaml", ".gitignore", ".dvc", ".dvcignore", "ledger/requests.jsonl")
    identity = [] if git(target, "config", "user.email", check=False).stdout.strip() else GIT_IDENTITY
    git(target, *identity, "commit", "--quiet", "-m", "unlearnflow init")
    print(f"workspace ready: {target}" + ("" if getattr(args, "quiet_hint", False)
                                           else f"\nnext: cd {target} && {invocation()} train"))
    return 0


def invocation() -> str:
    """How to call this CLI again: ``unlearnflow`` when that name on PATH is this program,
    else the path it was started by (e.g. ``.venv/bin/unlearnflow`` right after setup)."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    on_path = shutil.which("unlearnflow")
    if started is None or started.name != "unlearnflow":
        return "unlearnflow"
    path = started.resolve()
    if on_path and Path(on_path).resolve() == path:
        return "unlearnflow"
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def cmd_train(args) -> int:
    from flows.train import run_train

    t0 = time.perf_counter()
    result = run_train(args.workspace, commit=not args.no_commit, wait=not args.no_wait)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    m, ml, lin = result["metrics"], result["mlflow"], result["lineage"]
    print()
    print(f"trained {len(result['shards'])} constituents on {result['prepared']['train_records']} records "
          f"in {time.perf_counter() - t0:.1f}s (pipeline {result['pipeline_seconds']:.1f}s)")
    for s in result["shards"]:
        reused = "all stages reused" if not s["trained_stages"] else f"trained stages {[k + 1 for k in s['trained_stages']]}"
        print(f"  shard {s['shard']}: {s['records']:5d} records  test acc {m['shard_accuracy'][str(s['shard'])]:.4f}  "
              f"{reused}  {s['seconds']:.1f}s")
    print(f"ensemble ({m['aggregation']}): test accuracy {m['ensemble_accuracy']:.4f} on {m['test_records']} records")
    print(f"registered version {ml['version']}: {'production' if ml['promoted'] else 'NOT promoted'} ({ml['reason']})")
    print(f"lineage: git {(lin['git_commit'] or '-')[:10]}, dvc.lock md5 {lin['dvc_lock_md5'][:10]}, "
          f"data version {lin['data_version'][:10]}, dvc status {'clean' if lin['dvc_status_clean'] else 'NOT clean'}")
    print(f"inspect: unlearnflow ui -C {result['workspace']}  (experiment id {ml['experiment_id']}, run {ml['run_id']})")
    return 0


def _file_request(args, kind: str):
    from tasks.erasure import now
    from tasks.workspace import Workspace
    from unlearnflow.erasure import make_request

    ws = Workspace(args.workspace)
    ws.check()
    params = ws.load_params()
    from unlearnflow.unlearning import check_method

    check_method(args.method or params.unlearn.method, params.train)  # before anything is filed
    for flag in ("subject", "record", "file"):
        for value in getattr(args, flag, None) or ():
            if not value.strip():
                raise ConfigError(f"--{flag} {value!r} is empty; name a {flag}")
    label = None
    if kind == "rectify":
        classes = _classes(ws, params)
        label = classes.index(args.label) if args.label in classes else (
            int(args.label) if args.label.isdigit() and int(args.label) < len(classes) else None)
        if label is None:
            print(f"error: --label {args.label!r} is not a class; valid choices: {', '.join(classes)} "
                  f"(or an index 0..{len(classes) - 1})", file=sys.stderr)
            return ws, None, False
    request = make_request(kind, params.data, ws.secret_key(), subjects=getattr(args, "subject", None) or (),
                           records=args.record or (), files=getattr(args, "file", None) or (), label=label)
    ledger = ws.ledger()
    request_id, new = ledger.file(request, now())
    if ledger.set_aside:
        print(f"warning: the ledger ended in a torn line (a command stopped while filing, before it said "
              f"'filed'); it was set aside in {ledger.set_aside}. If you were filing a request then, file it again",
              file=sys.stderr)
    matched = _records_matching(ws, params, request) if new else None
    print(f"request {request_id} {'filed' if new else 'was already filed (no second effect)'}"
          + (f" (it matches {matched} record(s) in the current data)" if matched else ""))
    if matched == 0:
        print(f"warning: request {request_id} matches no record in the current data (check the spelling of "
              f"{_selectors(args)}); it stays on file, and erasing it changes no model: it is recorded as unmatched",
              file=sys.stderr)
    return ws, request_id, new


def _selectors(args) -> str:
    return ", ".join(f"--{flag} {v}" for flag in ("subject", "record", "file") for v in getattr(args, flag, None) or ())


def _records_matching(ws, params, request) -> int | None:
    """How many records of the current data version a request names (None: not prepared yet)."""
    from unlearnflow.erasure import resolve
    from unlearnflow.records import SPLITS, RecordSet
    from unlearnflow.stages import load_split

    if not all(ws.layout.split_dir(s).is_dir() for s in SPLITS):
        return None
    records = RecordSet.concat([load_split(ws.layout, s) for s in SPLITS])
    return len(resolve(request, records, ws.secret_key()))


def _classes(ws, params) -> list[str]:
    summary = ws.layout.prepared_summary
    if summary.is_file():
        return json.loads(summary.read_text())["classes"]
    from unlearnflow.datasets import load_dataset

    return list(load_dataset(params.data).classes)


def _run_erase_and_report(ws, args) -> int:
    from flows.erase import run_erase

    result = run_erase(str(ws.root), commit=not args.no_commit, wait=not getattr(args, "busy_fail", False))
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    print()
    if result["status"] == "idle":
        print(result["message"])
        return 0
    if result["status"] == "unmatched":
        print(f"erasure {result['erasure_id']}: request(s) {', '.join(result['unmatched'])} matched no record; "
              f"recorded as unmatched in the ledger. No model changed, no version registered, nothing purged")
        return 0
    for r in result["requests"]:
        print(f"  request {r['request_id']} ({r['kind']}): {r['records']} record(s)"
              + ("  -- matched nothing; recorded as unmatched" if not r["records"] else ""))
    print(f"erasure {result['erasure_id']}: removed {result['erased_records']} record(s)")
    for k, a in result["affected"].items():
        print(f"  shard {k}: retrained from slice {a['first_retrained_slice']} "
              f"(resumed from {a['resumed_from_checkpoint'][:12] + '…' if a['resumed_from_checkpoint'] else 'scratch'})")
    untouched = [str(s["shard"]) for s in result["shards"] if not s["trained_stages"]]
    print(f"  shards with no training: {', '.join(untouched) or 'none'}")
    f = result["forgotten"]
    if f.get("erased_records"):
        print(f"  erased records now: mean loss {f['erased_mean_loss']:.3f}, confidence {f['erased_mean_confidence']:.3f} "
              f"(holdout: {f['holdout_mean_loss']:.3f}, {f['holdout_mean_confidence']:.3f}){_few(f['erased_records'])}")
    a = result["audit"]
    print(f"  audit: forget-vs-holdout MIA AUC {_auc_text(a['after'])}"
          + (f", before {a['before']['forget_vs_holdout_mia_auc']:.3f}" if a["before"] else "")
          + f"; MIA-efficacy {_efficacy_text(a['after'])}"
          + (f", LiRA AUC {a['after']['forget_vs_holdout_lira_auc']:.3f}" if "forget_vs_holdout_lira_auc" in a["after"]
             else "")
          + f", {'passed' if a['passed'] else 'FAILED: ' + '; '.join(a['failed_because'])}"
          + f"; histogram {a['histogram']}")
    m = result["mlflow"]
    print(f"model version {m['version']} ({'production' if m['promoted'] else 'NOT promoted: ' + m['reason']}); "
          f"previous {result['previous_version'] or '-'}; superseded versions purged: "
          f"{', '.join(f'v{v}' for v in result['superseded_purged']) or 'none'}")
    print(f"certificate {result['certificate']}")
    print(f"compute {result['compute_seconds']:.1f}s, total {result['total_seconds']:.1f}s")
    return 0


def cmd_forget(args) -> int:
    if not (args.subject or args.record or args.file):
        print("error: name at least one --subject, --record or --file", file=sys.stderr)
        return 2
    ws, request_id, _ = _file_request(args, "forget")
    if args.no_wait:
        return 0
    return _fast_path_then_exact(ws, args)


def cmd_rectify(args) -> int:
    ws, request_id, _ = _file_request(args, "rectify")
    if request_id is None:
        return 2
    if args.no_wait:
        return 0
    return _fast_path_then_exact(ws, args)


def _fast_path_then_exact(ws, args) -> int:
    """With an approximate method (--method or unlearn.method): serve its version first,
    then (unless --exact later) run the exact erasure that supersedes it."""
    method = args.method or ws.load_params().unlearn.method
    if method == "sisa":
        return _run_erase_and_report(ws, args)
    from flows.approximate import run_approximate

    fast = run_approximate(str(ws.root), method, commit=not args.no_commit)
    if args.json and args.exact == "later":
        print(json.dumps(fast, indent=1, default=str))
        return 0
    if not args.json:
        _print_approximate(fast)
    if args.exact == "later":
        print("exact erasure queued: the requests stay pending until `unlearnflow erase` (or the served flow) runs")
        return 0
    if args.json:
        from flows.erase import run_erase

        exact = run_erase(str(ws.root), commit=not args.no_commit)
        print(json.dumps({"approximate": fast, "exact": exact}, indent=1, default=str))
        return 0
    print("\nnow the exact SISA erasure, which supersedes it:")
    return _run_erase_and_report(ws, args)


SMALL_SAMPLE = 30  # fewer erased records than this: a figure about them alone says little


def _few(n: int) -> str:
    return f" (n = {n}: too few records to judge)" if n < SMALL_SAMPLE else f" (n = {n})"


def _auc_text(report: dict) -> str:
    """The loss-threshold AUC with its 95% interval and the counts it rests on."""
    from unlearnflow.audit import auc_interval

    value, n, m = report["forget_vs_holdout_mia_auc"], report["forget_records"], report.get("holdout_records", 0)
    lo, hi = auc_interval(value, n, m)
    return (f"{value:.3f} (95% interval {lo:.2f}-{hi:.2f}; {n} erased vs {m} holdout records"
            + ("; too few erased records to judge)" if n < SMALL_SAMPLE else ")"))


def _efficacy_text(report: dict) -> str:
    n = report["forget_records"]
    return f"{report['mia_efficacy']:.3f} (of {n} erased record{'s' if n != 1 else ''})"


def _print_approximate(fast: dict) -> None:
    print()
    if fast["status"] == "idle":
        print(fast["message"])
        return
    a, m = fast["audit"], fast["mlflow"]
    print(f"approximation {fast['approximation_id']} ({fast['method']}): {fast['erased_records']} record(s) erased, "
          f"{fast['relabelled_records']} relabelled, in shard(s) {', '.join(str(s['shard']) for s in fast['shards'])} "
          f"of v{fast['base_version']}; {sum(s['seconds'] for s in fast['shards']):.1f}s of unlearning, "
          f"{fast['total_seconds']:.1f}s in all")
    for s in fast["shards"]:
        for d in s["details"]:
            if "budget" in d and "spent" in d:  # certified_removal
                print(f"  shard {s['shard']}: certified (epsilon {d['epsilon']:g}, delta {d['delta']:g}); bound "
                      f"{d['bound']:.4g}, spent {d['spent']:.4g} of {d['budget']:.4g}"
                      + ("; past the budget, so retrained exactly" if d["retrain_triggered"] else ""))
    print(f"  audit: forget-vs-holdout MIA AUC {_auc_text(a['after'])}"
          + (f", before {a['before']['forget_vs_holdout_mia_auc']:.3f}" if a["before"] else "")
          + f"; test accuracy {a['after']['test_accuracy']:.4f}"
          + f", {'passed' if a['passed'] else 'FAILED: ' + '; '.join(a['failed_because'])}")
    print(f"model version {m['version']} guarantee approximate "
          f"({'production' if m['promoted'] else 'NOT promoted: ' + m['reason']}); record {fast['record']}")


def cmd_erase(args) -> int:
    from tasks.workspace import Workspace

    ws = Workspace(args.workspace)
    ws.check()
    params = ws.load_params()
    from unlearnflow.unlearning import check_method

    check_method(args.method or params.unlearn.method, params.train)
    return _fast_path_then_exact(ws, args)


def cmd_demo(args) -> int:
    """Train if needed, erase one subject, and say what happened."""
    from flows.erase import run_erase
    from flows.train import run_train
    from tasks import lineage
    from tasks.erasure import now
    from tasks.tracking import latest_full_training_seconds, production_version
    from tasks.workspace import Workspace
    from unlearnflow.erasure import make_request, subjects_are_personal

    target = Path(args.workspace)
    if not (target / "params.yaml").exists():
        print(f"demo: creating workspace {target} (mnist5k, S=5 shards x R=4 slices)")
        if cmd_init(argparse.Namespace(dir=str(target), dataset=None, model=None, quiet_hint=True)) != 0:
            return 2
    ws = Workspace(target)
    params = ws.load_params()
    untrained = production_version(ws, params.tracking.registered_model) is None
    if untrained or (not ws.pending_requests() and not lineage.dvc_status_clean(ws.root)[0]):
        print("demo: training the SISA ensemble first (about 35 s on 2 cores)")
        run_train(str(ws.root))
    subject = args.subject
    if subject is None:
        if subjects_are_personal(params.data):
            print("error: this dataset names real people; pass --subject ID", file=sys.stderr)
            return 2
        subject = _demo_subject(ws, params)
    request = make_request("forget", params.data, ws.secret_key(), subjects=[subject])
    request_id, _ = ws.ledger().file(request, now())
    print(f"demo: subject {subject} (synthetic) asks to be forgotten: request {request_id}")
    result = run_erase(str(ws.root))
    full = latest_full_training_seconds(ws, params.tracking.registered_model)
    compute = result["compute_seconds"]
    print()
    print(f"removed      {result['erased_records']} record(s) of subject {subject} (stored only as "
          f"{request.subjects[0]})")
    for k, a in result["affected"].items():
        print(f"retrained    shard {k} from slice {a['first_retrained_slice']} of {params.partition.slices}; "
              f"the other {params.partition.num_shards - len(result['affected'])} shards trained nothing")
    trained = sum(s["seconds"] for s in result["shards"] if s["trained_stages"])
    print(f"time         {trained:.1f}s training"
          + (f" vs {full:.1f}s for the last full training of all shards ({full / max(trained, 1e-9):.1f}x less)"
             if full else "")
          + f"; whole erase flow {result['total_seconds']:.1f}s ({compute:.1f}s of it pipeline computation)")
    f = result["forgotten"]
    if f.get("erased_records"):
        print(f"forgotten?   erased records' mean confidence {f['erased_mean_confidence']:.3f} vs "
              f"{f['holdout_mean_confidence']:.3f} on never-seen holdout records{_few(f['erased_records'])}")
    a = result["audit"]
    print(f"audit        membership-inference AUC, erased vs holdout records (0.5 = looks unseen): "
          f"{_auc_text(a['after'])}"
          + (f"; {a['before']['forget_vs_holdout_mia_auc']:.3f} before the erasure" if a["before"] else "")
          + f"; {'passed' if a['passed'] else 'FAILED'}; histogram {Path(a['histogram']).relative_to(ws.root)}")
    m = result["mlflow"]
    print(f"model        {params.tracking.registered_model} v{m['version']} "
          f"({'production' if m['promoted'] else 'NOT promoted: ' + m['reason']}), test accuracy "
          f"{result['metrics']['ensemble_accuracy']:.4f}; "
          + (f"model files of v{', v'.join(map(str, result['superseded_purged']))} purged" if result["superseded_purged"]
             else f"kept v{', v'.join(map(str, result['superseded_retained']))} ({params.retention.reason})"
             if result["superseded_retained"] else "no superseded model files purged"))
    print(f"certificate  {Path(result['certificate']).relative_to(ws.root)}; check it with "
          f"`{invocation()} verify -C {args.workspace} --retrain`")
    print(f"MLflow UI    `{invocation()} ui -C {args.workspace}`, experiment {params.tracking.experiment}, run "
          f"erase-{result['erasure_id']} (run id {m['run_id']})")
    return 0


def _demo_subject(ws, params) -> str:
    """The first synthetic subject (in id order) that still has records in the training split."""
    from unlearnflow.datasets import load_dataset
    from unlearnflow.pseudonyms import SYNTHETIC_KEY, pseudonym
    from unlearnflow.stages import load_split

    in_training = set(load_split(ws.layout, "train").subject_ids)
    for raw in sorted(set(load_dataset(params.data).subject_ids)):
        if pseudonym(SYNTHETIC_KEY, raw) in in_training:
            return raw
    raise SystemExit("error: no subject left in the training split")


def cmd_serve(args) -> int:
    from flows.serve import serve

    serve(args.workspace, announce=lambda msg: print(msg, flush=True))
    return 0


def cmd_audit(args) -> int:
    from flows.audit import run_audit

    result = run_audit(args.workspace, args.version, args.reference, args.lira)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    from unlearnflow.audit import ATTACKS

    a, r = result["after"], result["reference"] or {}
    ref = f"reference v{result['reference_version']}" if r else ""
    print(f"audit of version {result['version']}" + (f" against {ref}" if r else "") + f" ({result['seconds']:.1f}s"
          + (f", of which {result['lira_reference_seconds']:.1f}s LiRA references" if result["lira_reference_seconds"]
             else "") + ")")
    rows = [("erased records (all requests so far)", "erased_total", "{:.0f}"),
            ("  of which still in the source, audited", "forget_records", "{:.0f}"),
            ("forget accuracy", "forget_accuracy", "{:.4f}"),
            ("retain accuracy", "retain_accuracy", "{:.4f}"),
            ("test accuracy", "test_accuracy", "{:.4f}")]
    rows += [(label, key, "{:.4f}") for name in ATTACKS.names() for key, label in ATTACKS.get(name).labels.items()]
    print(f"  {'':46s} {'v' + result['version']:>10s}" + (f" {ref:>20s}" if r else ""))
    a = {**a, "erased_total": result["erased_total"]}
    for label, key, fmt in rows:
        if key in a:
            print(f"  {label:46s} {fmt.format(a[key]):>10s}" + (f" {fmt.format(r[key]):>20s}" if key in r else ""))
    if r:
        print(f"  {'Avg Gap (forget/retain/test acc, MIA-efficacy)':46s} {result['avg_gap']:>10.4f}")
    print(f"histogram: {result['histogram']}")
    return 0


def cmd_methods(args) -> int:
    from unlearnflow.unlearning import UNLEARNERS

    rows = [{"method": "sisa", "retain_data": "-", "summary": "exact: the erase flow retrains the affected shards "
             "from their last clean checkpoint (default)"}]
    for name in UNLEARNERS.names():
        cls = UNLEARNERS.get(name)
        retain = "needs" if cls.needs_retain else "optional" if cls.can_use_retain else "never"
        rows.append({"method": name, "retain_data": retain, "summary": cls.summary})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'method':24s} {'retain data':12s} what it does")
    for r in rows:
        print(f"{r['method']:24s} {r['retain_data']:12s} {r['summary']}")
    return 0


def cmd_verify(args) -> int:
    from tasks.verification import verify
    from tasks.workspace import Workspace

    ws = Workspace(args.workspace)
    ws.check()
    if not (ws.root / "dvc.lock").is_file():
        raise ConfigError(f"nothing to verify in {ws.root}: it has never been trained (no dvc.lock); "
                          f"run `unlearnflow train` first")
    _interrupted_notice(ws)
    checks = verify(ws, retrain=args.retrain or args.retrain_all, retrain_all=args.retrain_all)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=1))
    else:
        for c in checks:
            print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    return 0 if all(c.ok for c in checks) else 1


def cmd_lineage(args) -> int:
    from tasks.tracking import version_history
    from tasks.workspace import Workspace

    ws = Workspace(args.workspace)
    ws.check()
    if args.version is not None and (not args.version.isdigit() or int(args.version) < 1):
        raise ConfigError(f"--version {args.version!r} is invalid: expected a version number (1, 2, …; "
                          f"`unlearnflow lineage` lists them)")
    name = ws.load_params().tracking.registered_model
    history = version_history(ws, name, args.version)
    if args.version is not None and not any(h["version"] == args.version for h in history):
        known = [h["version"] for h in version_history(ws, name)]
        raise ConfigError(f"{name!r} has no version {args.version}; registered versions: "
                          f"{', '.join(sorted(known, key=int)) or 'none'}")
    if args.json:
        print(json.dumps(history, indent=1))
        return 0
    if not history:
        print("no registered model versions yet")
        return 0
    for h in history:
        t = h["tags"]
        print(f"v{h['version']}  {h['created']}  {t.get('kind', 'train'):5s}  {' '.join(h['aliases'])}")
        print(f"    data version {t.get('data_version', '-')[:12]}  dvc.lock {t.get('dvc_lock_md5', '-')[:12]}  "
              f"git {t.get('git_commit', '-')[:10]}  test accuracy {t.get('ensemble_test_accuracy', '-')}  "
              f"guarantee {t.get('guarantee', '-')}")
        if t.get("erasure_id"):
            print(f"    erasure {t['erasure_id']}: requests {t.get('erasure_requests', '-')}; "
                  f"unmatched {t.get('erasure_unmatched') or 'none'}")
            print(f"    retrained {h['run_tags'].get('affected_slices', '-')}; "
                  f"previous version v{h['run_tags'].get('previous_version') or '-'}")
        if t.get("guarantee") == "approximate":
            print(f"    approximation {t.get('approximation_id')}: {t.get('unlearn_method')} on v{t.get('base_version')} "
                  f"for requests {t.get('approximated_requests')}; exact erasure {t.get('exact_erasure')}")
        if t.get("certified_epsilon"):
            print(f"    certified removal: (epsilon {t['certified_epsilon']}, delta {t['certified_delta']}); "
                  f"gradient-residual bound spent {t['certified_spent']} of {t['certified_budget']} per classifier; "
                  f"retrained past the budget: shards {t['certified_retrained_shards']}")
        if t.get("dp_epsilon"):
            print(f"    DP-SGD: (epsilon {t['dp_epsilon']}, delta {t['dp_delta']}) per record, largest over the "
                  f"constituents (noise multiplier {t.get('dp_noise_multiplier')}, clip {t.get('dp_max_grad_norm')})")
        if t.get("promotion"):
            print(f"    {t['promotion']}")
        if t.get("purged"):
            print(f"    model files purged: {t['purged']}")
    return 0


def cmd_status(args) -> int:
    from tasks import lineage
    from tasks.tracking import production_version
    from tasks.workspace import Workspace

    ws = Workspace(args.workspace)
    ws.check()
    params = ws.load_params()
    _interrupted_notice(ws)
    info = {"workspace": str(ws.root), "dataset": params.data.dataset,
            "shards": params.partition.num_shards, "slices": params.partition.slices}
    if (ws.root / "dvc.lock").is_file():
        lock = lineage.lock_info(ws.root)
        info["data_version"] = lock["outs"].get("prepare", {}).get("data/prepared")
        info["dvc_lock_md5"] = lock["dvc_lock_md5"]
        info["constituents"] = {
            str(k): lock["outs"].get(f"train@{k}", {}).get(ws.layout.rel(ws.layout.model(k))) for k in params.partition.shards
        }
        info["dvc_status_clean"] = lineage.dvc_status_clean(ws.root)[0]
    mv = production_version(ws, params.tracking.registered_model)
    info["production"] = None if mv is None else {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, **mv.tags}
    pending = [r.request.request_id for r in ws.pending_requests()]
    approximated = ws.approximated_requests()
    info["requests_pending_exact"] = pending
    info["requests_only_approximately_forgotten"] = [r for r in pending if r in approximated]
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"workspace    {info['workspace']}")
    if mv is None:
        print("production   none yet (run `unlearnflow train`)")
    else:
        t = mv.tags
        print(f"production   {mv.name} v{mv.version}  test accuracy {t.get('ensemble_test_accuracy', '?')}  "
              f"guarantee {t.get('guarantee', '?')}  git {t.get('git_commit', '')[:10]}")
    print(f"data         {params.data.dataset}  version {str(info.get('data_version') or '-')[:12]}")
    print(f"shards       S={info['shards']} x R={info['slices']} slices")
    for k, md5 in info.get("constituents", {}).items():
        print(f"  train@{k}  model md5 {md5 or '-'}")
    if "dvc_status_clean" in info:
        print(f"dvc status   {'clean' if info['dvc_status_clean'] else 'changed: run `unlearnflow erase`' if pending else 'changed: run `unlearnflow train` or `dvc repro`'}")
    print(f"requests     {len(pending)} pending the exact erasure"
          + (f", of which only approximately forgotten so far: {', '.join(info['requests_only_approximately_forgotten'])}"
             if info["requests_only_approximately_forgotten"] else ""))
    return 0


def cmd_ui(args) -> int:
    from tasks.workspace import Workspace

    import socket

    ws = Workspace(args.workspace)
    ws.check()
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
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return _run_group(cmd)


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
        out = stages.prepare(params.data, layout, ws.secret_key(), ws.ledger().read(), ws.tombstones())
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
        print(f"note: {'erasure ' + state.get('erasure_id', '') if state['kind'] == 'erase' else 'a fast path'} was "
              f"interrupted (last step done: {state['steps'][-1] if state['steps'] else 'none'}); the next writing "
              f"command (e.g. `unlearnflow erase`) finishes or rolls it back", file=sys.stderr)
    if ws.ledger().read().torn:
        print("note: the ledger ends in a torn line (a command stopped while filing); the next filing sets it aside",
              file=sys.stderr)


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

    sp = add("init", "create a new git + DVC workspace with default params.yaml and dvc.yaml", cmd_init)
    sp.add_argument("dir", help="directory to create (may exist, but must not hold params.yaml/dvc.yaml)")
    sp.add_argument("--dataset", help="data.dataset, e.g. mnist5k, digits, imagefolder:/path/to/images")
    sp.add_argument("--model", help="train.model: cnn, mlp, resnet18 or logreg")

    sp = add("train", "train (or resume) all constituents with the Prefect flow, record lineage, register the model", cmd_train)
    sp.add_argument("--no-commit", action="store_true", help="do not git-commit dvc.lock afterwards")
    sp.add_argument("--no-wait", action="store_true",
                    help="refuse instead of waiting when another command is writing to the workspace")
    sp.add_argument("--json", action="store_true", help="print the full result as JSON")

    sp = add("forget", "file an erasure request (right to be forgotten) and carry it out", cmd_forget)
    sp.add_argument("--subject", action="append", help="a person: all their records (repeatable)")
    sp.add_argument("--record", action="append", help="a record id (repeatable)")
    sp.add_argument("--file", action="append", help="a source file name, e.g. Away_image03.JPG (repeatable)")
    sp.add_argument("--no-wait", action="store_true", help="only file the request; a later erase runs it")
    _add_method_args(sp)
    sp.add_argument("--no-commit", action="store_true", help="do not git-commit the new data version")
    sp.add_argument("--json", action="store_true", help="print the full result as JSON")

    sp = add("rectify", "file a label correction (right to rectification) and retrain exactly", cmd_rectify)
    sp.add_argument("--record", action="append", required=True, help="a record id (repeatable)")
    sp.add_argument("--label", required=True, help="the corrected label: a class name or index")
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

    add("serve", "run the erase flow (after the fast path, if unlearn.method is approximate) whenever the "
        "event 'unlearnflow.erasure.requested' arrives "
        "(needs `prefect server start` and PREFECT_API_URL)", cmd_serve)

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

    sp = add("verify", "check the erasure promises using only the workspace and MLflow (exit 1 on failure)", cmd_verify)
    sp.add_argument("--retrain", action="store_true",
                    help="also retrain the latest erasure's constituents from scratch and compare bitwise")
    sp.add_argument("--retrain-all", action="store_true", help="retrain and compare every constituent")
    sp.add_argument("--json", action="store_true")

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
    return p


def main(argv=None) -> int:
    quiet_telemetry()
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)  # commands without a workspace have no --verbose
    if not verbose and args.command != "serve" and "prefect" not in sys.modules:
        # Prefect and MLflow read their log levels when imported: their INFO lines (flow and task
        # runs, the temporary server's notice) stay out of the report; our progress lines still
        # show. MLflow's registration prints are muted where they happen (tasks.tracking). `serve`
        # keeps them all: its runs are watched in Prefect's UI.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if verbose:
        os.environ["UNLEARNFLOW_VERBOSE"] = "1"  # tasks.tracking lets MLflow's own prints through
    if args.command in FLOW_COMMANDS and not (args.command in ("forget", "rectify") and args.no_wait):
        print(f"unlearnflow {args.command}: loading torch, Prefect and MLflow …", file=sys.stderr, flush=True)
    from unlearnflow.errors import UnlearnflowError

    try:
        return args.fn(args)
    except UnlearnflowError as e:
        detail = getattr(e, "local_detail", "")
        print(f"error: {e}" + (f" ({detail})" if detail else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing acknowledged is lost; the next command that writes to the workspace "
              "finishes or rolls back what was under way", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an environment problem: one line here, the traceback in a file
        return _unexpected(e)


def _unexpected(e: Exception) -> int:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="unlearnflow-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(e, file=f)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(f"error: {type(e).__name__}: {first[:300]} (traceback in {path})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
