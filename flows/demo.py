"""``unlearnflow demo``, the main job: create the workspace if needed, train if needed, let
one synthetic subject ask to be forgotten, run the erase flow and say what happened."""

from __future__ import annotations

from pathlib import Path

from flows import report
from unlearnflow.errors import ConfigError


def run_demo(workspace: str, subject: str | None = None) -> int:
    from flows.erase import run_erase
    from flows.train import run_train
    from tasks import lineage
    from tasks.new_workspace import create_workspace
    from tasks.registry import production_version
    from tasks.requests import file_request
    from tasks.workspace import Workspace
    from unlearnflow.erasure import subjects_are_personal

    target = Path(workspace)
    if not (target / "params.yaml").exists():
        print(f"demo: creating workspace {target} (mnist5k, S=5 shards x R=4 slices)")
        print(f"workspace ready: {create_workspace(target)}")
    ws = Workspace(target)
    params = ws.load_params()
    untrained = production_version(ws, params.tracking.registered_model) is None
    if untrained or (not ws.pending_requests() and not lineage.dvc_status_clean(ws.root)[0]):
        print("demo: training the SISA ensemble first (about 45 s on 2 cores)")
        run_train(str(ws.root), params=params)
    if subject is None and subjects_are_personal(params.data):
        raise ConfigError("this dataset names real people; pass --subject ID")
    subject = subject or next(iter(ws.training_subjects(params)), None)
    if subject is None:
        raise ConfigError("no subject left in the training split")
    filed = file_request(ws, params, "forget", subjects=[subject], signs=True)
    print(f"demo: subject {subject} (synthetic) asks to be forgotten: request {filed.request_id}")
    result = run_erase(str(ws.root), params=params)
    summary(ws, params, workspace, subject, filed.request.subjects[0], result)
    return 0


def summary(ws, params, workspace: str, subject: str, stored_as: str, result: dict) -> None:
    from tasks.tracking import latest_full_training_seconds

    full = latest_full_training_seconds(ws, params.tracking.registered_model)
    print(f"\nremoved      {result['erased_records']} record(s) of subject {subject} (stored only as {stored_as})")
    for k, a in result["affected"].items():
        print(f"retrained    shard {k} from slice {a['first_retrained_slice']} of {params.partition.slices}; "
              f"the other {params.partition.num_shards - len(result['affected'])} shards trained nothing")
    trained = sum(s["seconds"] for s in result["shards"] if s["trained_stages"])
    print(f"time         {trained:.1f}s training"
          + (f" vs {full:.1f}s for the last full training of all shards ({full / max(trained, 1e-9):.1f}x less)"
             if full else "")
          + f"; whole erase flow {result['total_seconds']:.1f}s ({result['compute_seconds']:.1f}s of it pipeline "
            "computation)")
    f, a, m = result["forgotten"], result["audit"], result["mlflow"]
    if f.get("erased_records"):
        print(f"forgotten?   erased records' mean confidence {f['erased_mean_confidence']:.3f} vs "
              f"{f['holdout_mean_confidence']:.3f} on never-seen holdout records{report.few(f['erased_records'])}")
    print(f"audit        membership-inference AUC, erased vs holdout records (0.5 = looks unseen): "
          f"{report.auc_text(a['after'])}"
          + (f"; {a['before']['forget_vs_holdout_mia_auc']:.3f} before the erasure" if a["before"] else "")
          + f"; {'passed' if a['passed'] else 'FAILED'}; histogram {Path(a['histogram']).relative_to(ws.root)}")
    purged, kept = result["superseded_purged"], result["superseded_retained"]
    print(f"model        {params.tracking.registered_model} v{m['version']} ({report.served(m)}), test accuracy "
          f"{result['metrics']['ensemble_accuracy']:.4f}; "
          + (f"model files of v{', v'.join(purged)} purged" if purged
             else f"kept v{', v'.join(kept)} ({params.retention.reason})" if kept
             else "no superseded model files purged"))
    print(f"certificate  {Path(result['certificate']).relative_to(ws.root)}; check it with "
          f"`{report.invocation()} verify -C {workspace} --retrain`")
    log = result["erasure_log"]
    print(f"receipt      erasure log size {log['log_size']}; the person's receipt: `{report.invocation()} receipt -C "
          f"{workspace} --subject {subject} -o {subject}.tlog-proof`, checked by unlearnflow/receipt_verify.py alone "
          f"with the key `{report.invocation()} log key -C {workspace}` prints")
    print(f"MLflow UI    `{report.invocation()} ui -C {workspace}`, experiment {params.tracking.experiment}, run "
          f"erase-{result['erasure_id']}; version {m['version']}'s page holds its lineage card")
