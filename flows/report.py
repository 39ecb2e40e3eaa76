"""What each command prints: one summary block per command, read by a person (``--json``
gives the whole result instead). No Python reprs, no colour codes; figures about a handful
of erased records say how many they rest on."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


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


def few(n: int) -> str:
    from unlearnflow.lineage_card import SMALL_SAMPLE  # (the audit package imports torch: not at start-up)

    return f" (n = {n}: too few records to judge)" if n < SMALL_SAMPLE else f" (n = {n})"


def auc_text(report: dict) -> str:
    """The loss-threshold AUC with its 95% interval and the counts it rests on."""
    from unlearnflow.audit import auc_interval
    from unlearnflow.lineage_card import SMALL_SAMPLE

    value, n, m = report["forget_vs_holdout_mia_auc"], report["forget_records"], report.get("holdout_records", 0)
    lo, hi = auc_interval(value, n, m)
    return (f"{value:.3f} (95% interval {lo:.2f}-{hi:.2f}; {n} erased vs {m} holdout records"
            + ("; too few erased records to judge)" if n < SMALL_SAMPLE else ")"))


def efficacy_text(report: dict) -> str:
    n = report["forget_records"]
    return f"{report['mia_efficacy']:.3f} (of {n} erased record{'s' if n != 1 else ''})"


def verdict(audit: dict) -> str:
    return "passed" if audit["passed"] else "FAILED: " + "; ".join(audit["failed_because"])


def served(mlflow: dict) -> str:
    return "production" if mlflow["promoted"] else "NOT promoted: " + mlflow["reason"]


def train(result: dict, seconds: float) -> None:
    m, ml, lin = result["metrics"], result["mlflow"], result["lineage"]
    print(f"\ntrained {len(result['shards'])} constituents on {result['prepared']['train_records']} records "
          f"in {seconds:.1f}s (pipeline {result['pipeline_seconds']:.1f}s)")
    for s in result["shards"]:
        stages = ", ".join(str(k + 1) for k in s["trained_stages"])
        print(f"  shard {s['shard']}: {s['records']:5d} records  test acc {m['shard_accuracy'][str(s['shard'])]:.4f}  "
              f"{'trained slice stages ' + stages if stages else 'all stages reused'}  {s['seconds']:.1f}s")
    print(f"ensemble ({m['aggregation']}): test accuracy {m['ensemble_accuracy']:.4f} on {m['test_records']} records")
    print(f"registered version {ml['version']}: {'production' if ml['promoted'] else 'NOT promoted'} ({ml['reason']})")
    print(f"lineage: git {(lin['git_commit'] or '-')[:10]}, dvc.lock md5 {lin['dvc_lock_md5'][:10]}, "
          f"data version {lin['data_version'][:10]}, dvc status {'clean' if lin['dvc_status_clean'] else 'NOT clean'}")
    print(f"inspect: {invocation()} ui -C {result['workspace']}  (experiment id {ml['experiment_id']}, "
          f"run {ml['run_id']}; the version's page shows its lineage card)")


def erase(result: dict) -> None:
    print()
    if result["status"] == "idle":
        print(result["message"])
        return
    if result["status"] == "unmatched":
        print(f"erasure {result['erasure_id']}: request(s) {', '.join(result['unmatched'])} matched no record; "
              f"recorded as unmatched in the ledger. No model changed, no version registered, nothing purged")
        return
    for r in result["requests"]:
        feature = r.get("feature")
        print(f"  request {r['request_id']} ({r['kind']}"
              + (f": region {','.join(map(str, feature['region']))} fill {feature['fill']}" if feature else "")
              + f"): {r['records']} record(s)"
              + ("  -- matched nothing; recorded as unmatched" if not r["records"] else ""))
    print(f"erasure {result['erasure_id']}: removed {result['erased_records']} record(s)"
          + (f", filled the region of {result['feature_edited_records']} record(s) (their pixels' SHA-256 before "
             "and after are in the certificate)" if result.get("feature_edited_records") else ""))
    for k, a in result["affected"].items():
        print(f"  shard {k}: retrained from slice {a['first_retrained_slice']} "
              f"(resumed from {a['resumed_from_checkpoint'][:12] + '…' if a['resumed_from_checkpoint'] else 'scratch'})")
    untouched = [str(s["shard"]) for s in result["shards"] if not s["trained_stages"]]
    print(f"  shards with no training: {', '.join(untouched) or 'none'}")
    f = result["forgotten"]
    if f.get("erased_records"):
        print(f"  erased records now: mean loss {f['erased_mean_loss']:.3f}, confidence {f['erased_mean_confidence']:.3f} "
              f"(holdout: {f['holdout_mean_loss']:.3f}, {f['holdout_mean_confidence']:.3f}){few(f['erased_records'])}")
    a = result["audit"]
    print(f"  audit: forget-vs-holdout MIA AUC {auc_text(a['after'])}"
          + (f", before {a['before']['forget_vs_holdout_mia_auc']:.3f}" if a["before"] else "")
          + f"; MIA-efficacy {efficacy_text(a['after'])}"
          + (f", LiRA AUC {a['after']['forget_vs_holdout_lira_auc']:.3f}" if "forget_vs_holdout_lira_auc" in a["after"]
             else "")
          + f", {verdict(a)}; histogram {a['histogram']}")
    m = result["mlflow"]
    print(f"model version {m['version']} ({served(m)}); previous {result['previous_version'] or '-'}; "
          f"superseded versions purged: {', '.join(f'v{v}' for v in result['superseded_purged']) or 'none'}")
    print(f"certificate {result['certificate']}")
    log = result.get("erasure_log")
    if log:
        w = log["witnesses"]
        print(f"erasure log: size {log['log_size']}, checkpoint {log['checkpoint']}"
              + (f"; cosigned by {', '.join(w['cosigned'])}" if w["cosigned"] else "")
              + "".join(f"; NOT cosigned by {m['witness']} ({m['reason']}): the next checkpoint brings it up to date"
                        for m in w["missed"]))
        print(f"  receipts: unlearnflow receipt --request <id> -o FILE (one per request)")
    print(f"compute {result['compute_seconds']:.1f}s, total {result['total_seconds']:.1f}s")


def approximate(fast: dict) -> None:
    print()
    if fast["status"] == "idle":
        print(fast["message"])
        return
    a, m = fast["audit"], fast["mlflow"]
    print(f"approximation {fast['approximation_id']} ({fast['method']}): {fast['erased_records']} record(s) erased, "
          f"{fast['relabelled_records']} relabelled"
          + (f", {fast['feature_edited_records']} with a region filled" if fast.get("feature_edited_records") else "")
          + f", in shard(s) {', '.join(str(s['shard']) for s in fast['shards'])} "
          f"of v{fast['base_version']}; {sum(s['seconds'] for s in fast['shards']):.1f}s of unlearning, "
          f"{fast['total_seconds']:.1f}s in all")
    for s in fast["shards"]:
        for d in s["details"]:
            if "budget" in d and "spent" in d:  # certified_removal
                print(f"  shard {s['shard']}: certified (epsilon {d['epsilon']:g}, delta {d['delta']:g}); bound "
                      f"{d['bound']:.4g}, spent {d['spent']:.4g} of {d['budget']:.4g}"
                      + ("; past the budget, so retrained exactly" if d["retrain_triggered"] else ""))
    print(f"  audit: forget-vs-holdout MIA AUC {auc_text(a['after'])}"
          + (f", before {a['before']['forget_vs_holdout_mia_auc']:.3f}" if a["before"] else "")
          + f"; test accuracy {a['after']['test_accuracy']:.4f}, {verdict(a)}")
    print(f"model version {m['version']} guarantee approximate ({served(m)}); record {fast['record']}")


def audit(result: dict) -> None:
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


def methods(rows: list[dict]) -> None:
    print(f"{'method':24s} {'retain data':12s} what it does")
    for r in rows:
        print(f"{r['method']:24s} {r['retain_data']:12s} {r['summary']}")


def methods_markdown(rows: list[dict]) -> str:
    return "\n".join(["| method | retain data | what it does |", "|---|---|---|",
                      *(f"| `{r['method']}` | {r['retain_data']} | {r['summary']} |" for r in rows)])


def checks(results: list) -> None:
    for c in results:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")


LINEAGE_COLUMNS = (("version", 7), ("created (UTC)", 20), ("kind", 12), ("guarantee", 11), ("test acc", 8),
                   ("data version", 12), ("git", 10), ("alias", 10))


def lineage(history: list[dict]) -> None:
    """One table row per version (newest first), then what each version did, indented."""
    print("  ".join(f"{name:{width}s}" for name, width in LINEAGE_COLUMNS).rstrip())
    for h in history:
        t = h["tags"]
        cells = (f"v{h['version']}", h["created"].replace("T", " ")[:19], t.get("kind", "train"),
                 t.get("guarantee", "-"), t.get("ensemble_test_accuracy", "-"), t.get("data_version", "-")[:12],
                 t.get("git_commit", "-")[:10], " ".join(h["aliases"]) or "-")
        print("  ".join(f"{c:{width}s}" for c, (_, width) in zip(cells, LINEAGE_COLUMNS)).rstrip())
        for line in version_notes(h):
            print(f"         {line}")


def version_notes(h: dict) -> list[str]:
    t, notes = h["tags"], []
    if t.get("erasure_id"):
        notes.append(f"erasure {t['erasure_id']}: requests {t.get('erasure_requests', '-')}; unmatched "
                     f"{t.get('erasure_unmatched') or 'none'}; retrained {h['run_tags'].get('affected_slices', '-')}; "
                     f"previous version v{h['run_tags'].get('previous_version') or '-'}")
    if t.get("key_rotation"):
        notes.append(f"key rotation {t.get('key_rotation_id')}: {t['key_rotation']}; "
                     f"{t.get('key_rotation_requests_rekeyed', '0')} pending request(s) re-keyed")
    if t.get("guarantee") == "approximate":
        notes.append(f"approximation {t.get('approximation_id')}: {t.get('unlearn_method')} on v{t.get('base_version')} "
                     f"for requests {t.get('approximated_requests')}; exact erasure {t.get('exact_erasure')}")
    if t.get("certified_epsilon"):
        notes.append(f"certified removal: (epsilon {t['certified_epsilon']}, delta {t['certified_delta']}); "
                     f"gradient-residual bound spent {t['certified_spent']} of {t['certified_budget']} per classifier; "
                     f"retrained past the budget: shards {t['certified_retrained_shards']}")
    if t.get("dp_epsilon"):
        notes.append(f"DP-SGD: (epsilon {t['dp_epsilon']}, delta {t['dp_delta']}) per record, largest over the "
                     f"constituents (noise multiplier {t.get('dp_noise_multiplier')}, clip {t.get('dp_max_grad_norm')})")
    notes += [t["promotion"]] if t.get("promotion") else []
    notes += [f"model files purged: {t['purged']}"] if t.get("purged") else []
    return notes


def status(info: dict, mv, pending: list[str]) -> None:
    print(f"workspace    {info['workspace']}")
    if mv is None:
        print("production   none yet (run `unlearnflow train`)")
    else:
        t = mv.tags
        print(f"production   {mv.name} v{mv.version}  test accuracy {t.get('ensemble_test_accuracy', '?')}  "
              f"guarantee {t.get('guarantee', '?')}  git {t.get('git_commit', '')[:10]}")
    print(f"data         {info['dataset']}  version {str(info.get('data_version') or '-')[:12]}")
    print(f"shards       S={info['shards']} x R={info['slices']} slices")
    for k, md5 in info.get("constituents", {}).items():
        print(f"  train@{k}  model md5 {md5 or '-'}")
    if "dvc_status_clean" in info:
        changed = "changed: run `unlearnflow erase`" if pending else "changed: run `unlearnflow train` or `dvc repro`"
        print(f"dvc status   {'clean' if info['dvc_status_clean'] else changed}")
    only_approximate = info["requests_only_approximately_forgotten"]
    print(f"requests     {len(pending)} pending the exact erasure"
          + (f", of which only approximately forgotten so far: {', '.join(only_approximate)}" if only_approximate else ""))


def keys(info: dict) -> None:
    """``unlearnflow keys``: what the workspace records (lineage/keys.json) beside what is held here."""
    for name, label in (("subject", "subject key"), ("signing", "signing key")):
        k = info[name]
        recorded = k["recorded"] or "-"
        mark = "" if k["ok"] else "  (refused: restore it; README, 'Keys: moving, losing and rotating them')"
        print(f"{label:12s} recorded {recorded[:24]:24s} here: {k['held']}{mark}")
    for r in info["rotations"]:
        print(f"rotated      {r['key']} key {str(r['from'])[:12]} -> {str(r['to'])[:12]} at {r.get('at', '?')} "
              f"({r.get('rotation_id', '')})")
    print(f"record       {info['record']} (git)")


def rotation_plan(key: str, lines: list[str], confirmed: bool) -> None:
    print(f"rotating the {key} key:")
    for line in lines:
        print(f"  - {line}")
    if not confirmed:
        print(f"nothing was changed; run `{invocation()} keys rotate {key} --yes` to rotate it")


def rotated(state: dict) -> None:
    if state.get("finished_interrupted"):
        print(f"finished     the interrupted rotation {state['rotation_id']} of the {state['key']} key (no second "
              f"rotation); `{invocation()} keys` shows the keys now")
        return
    if state["key"] == "subject":
        print(f"rotated      subject key {state['old_id']} -> {state['new_id']} ({state['rotation_id']}); "
              f"{len(state['rekeyed'])} pending request(s) re-keyed"
              + (f": {', '.join(f'{a} -> {b}' for a, b in state['rekeyed'].items())}" if state["rekeyed"] else ""))
        if state.get("version"):
            print(f"version      v{state['version']} (kind key_rotation): shards {state.get('shards_trained')} "
                  f"retrained; {'in production' if state.get('promoted') else 'NOT promoted (see `lineage`)'}; "
                  f"chain entry {state['entry']}")
    else:
        print(f"rotated      signing key {state['old_public'][:12]}… -> {state['new_public'][:12]}… "
              f"({state['rotation_id']}); chain entry {state['entry']}")
    print(f"back up      .unlearnflow/{state['key']}.key now: the old key is gone")
