"""Lineage cards (``unlearnflow.lineage_card``) for the three kinds of registered version,
from what their flows already hold: a training run's shards, an erasure's certificate
body, a fast path's approximation record. ``registry.write_card`` puts them on the version."""

from __future__ import annotations

from pathlib import Path

from tasks import registry
from tasks.workspace import Workspace
from unlearnflow.lineage_card import Card


def training_card(version: str, shards: list[dict], metrics: dict, lineage: dict, run_name: str) -> Card:
    def trained(s: dict) -> str:
        if not s["trained_stages"]:
            return "every slice checkpoint reused (no training)"
        first = s["trained_stages"][0] + 1
        return "trained from scratch" if first == 1 else f"trained from slice {first} on"

    return Card(version=version, guarantee="exact", made_by=f"training run `{run_name}`",
                data_version=lineage["data_version"], git_commit=lineage["git_commit"] or "",
                dvc_lock_md5=lineage["dvc_lock_md5"], test_accuracy=metrics["ensemble_accuracy"],
                constituents={str(s["shard"]): {"manifest_md5": s["manifest_md5"], "model_md5": s["model_md5"],
                                                "trained": trained(s)} for s in shards})


def erasure_card(ws: Workspace, body: dict, run_id: str, certificate: str, histogram: str | None) -> Card:
    affected = body["affected_shards"]

    def trained(shard: str) -> str:
        if shard not in affected:
            return "unchanged (no training)"
        a = affected[shard]
        start = a["resumed_from_checkpoint"]
        return (f"retrained from slice {a['first_retrained_slice']} "
                + (f"(resumed from checkpoint {start[:12]}…)" if start else "(from scratch: no earlier checkpoint)"))

    return Card(version=str(body["new_version"]), guarantee="exact",
                made_by=f"erase run [`erase-{body['erasure_id']}`]({registry.run_page(ws, run_id)}) "
                        f"(erasure {body['erasure_id']}, "
                        f"{len(body['erased_record_ids'])} record(s) removed)",
                data_version=body["data_version"], git_commit=body["git_commit"] or "",
                dvc_lock_md5=body["dvc_lock_md5"], previous_version=str(body["previous_version"] or ""),
                requests=tuple(r["request_id"] for r in body["requests"]),
                test_accuracy=body["metrics"]["test_accuracy"],
                constituents={k: {**c, "trained": trained(k)} for k, c in body["constituents"].items()},
                audit_after=body["audit"]["after"], audit_before=body["audit"]["before"] or None,
                forgotten=body["metrics"], links=_links(ws, run_id, "certificate", certificate, histogram))


def approximation_card(ws: Workspace, record: dict, record_path: str, base_tags: dict, run_id: str,
                       histogram: str | None, git_commit: str | None) -> Card:
    affected = record["affected_shards"]
    return Card(version=str(record["new_version"]), guarantee="approximate",
                made_by=f"fast path [`approximate-{record['approximation_id']}`]({registry.run_page(ws, run_id)}) "
                        f"({record['method']}; "
                        f"{record['records_erased']} erased, {record['records_relabelled']} relabelled; "
                        "the exact erasure is still pending)",
                data_version=base_tags.get("data_version", ""), git_commit=git_commit or "",
                previous_version=str(record["base_version"]), requests=tuple(record["requests"]),
                test_accuracy=record["audit"]["after"].get("test_accuracy"),
                constituents={k: {"model_md5": md5, "trained": f"updated by {record['method']}" if k in affected
                                  else "unchanged"} for k, md5 in record["constituents"].items()},
                audit_after=record["audit"]["after"], audit_before=record["audit"]["before"] or None,
                links=_links(ws, run_id, "record", record_path, histogram, folder="approximation"))


def _links(ws: Workspace, run_id: str, label: str, document: str, histogram: str | None,
           folder: str | None = None) -> dict:
    """The card's links into the run's artifacts: the signed document (its page in the UI) and
    the histogram (the file itself, so the card can show it)."""
    name = Path(document).name
    links = {label: (name, registry.artifact_links(ws, run_id, f"{folder or label}/{name}")[0])}
    if histogram:
        shown = f"audit/{Path(histogram).name}"
        links["histogram"] = (shown, registry.artifact_links(ws, run_id, shown)[1])
    return links
