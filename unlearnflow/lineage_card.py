"""A registered version's lineage card: the Markdown MLflow shows on the version's page.

It answers an auditor's questions about one version in one place: which data version and
git commit made it, which constituents it holds (their manifest and model md5s, and for
each whether it was retrained and from which slice), which requests it carries out (by
their pseudonymous ids), what the audit measured next to the floor (what data the model
never saw scores), and where the signed certificate and the histogram are.

Pure text from plain values: ``tasks/registry.py`` writes it as the version's description.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unlearnflow.audit import ATTACKS, auc_interval

SMALL_SAMPLE = 30  # fewer erased records than this: a figure about them alone says little


@dataclass(frozen=True)
class Card:
    version: str
    guarantee: str  # exact | approximate
    made_by: str  # e.g. "erase run erase-e1a2b3 (erasure e1a2b3)"
    data_version: str
    git_commit: str
    dvc_lock_md5: str = ""
    previous_version: str = ""
    requests: tuple[str, ...] = ()
    constituents: dict = field(default_factory=dict)  # shard -> {manifest_md5, model_md5, trained}
    test_accuracy: float | None = None
    audit_after: dict | None = None
    audit_before: dict | None = None
    forgotten: dict | None = None  # erased vs holdout mean confidence (erased_record_metrics)
    links: dict = field(default_factory=dict)  # label -> url: certificate, histogram, record, run
    erasure_log: dict | None = None  # origin, log_size, root, checkpoint, witnesses {cosigned, missed}


def render(card: Card) -> str:
    lines = [f"### Lineage of version {card.version} ({card.guarantee} guarantee)", "",
             "| | |", "|---|---|",
             f"| made by | {card.made_by} |",
             f"| data version | `{card.data_version}` |",
             f"| git commit | `{card.git_commit or '-'}` |"]
    if card.dvc_lock_md5:
        lines.append(f"| dvc.lock md5 | `{card.dvc_lock_md5}` |")
    lines.append(f"| previous version | {('v' + card.previous_version) if card.previous_version else '-'} |")
    lines.append(f"| requests carried out | {', '.join(f'`{r}`' for r in card.requests) or 'none'} |")
    if card.test_accuracy is not None:
        lines.append(f"| test accuracy | {card.test_accuracy:.4f} |")
    for label in ("certificate", "record"):
        if label in card.links:
            lines.append(f"| {label} | [{card.links[label][0]}]({card.links[label][1]}) |")
    if card.erasure_log:
        log, w = card.erasure_log, card.erasure_log.get("witnesses") or {}
        lines.append(f"| erasure log | size {log['log_size']}, root `{(log['root'] or '-')[:16]}…`, checkpoint "
                     f"`{log['checkpoint'].rsplit('/', 1)[-1]}` of `{log['origin']}` |")
        lines.append(f"| witnesses | cosigned by {', '.join(w.get('cosigned') or []) or 'none'}"
                     + "".join(f"; missed: {m['witness']}" for m in w.get("missed") or []) + " |")
    lines += ["", "#### Constituents", "", "| shard | manifest md5 | model md5 | this version |", "|---|---|---|---|"]
    for shard, c in sorted(card.constituents.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {shard} | `{c.get('manifest_md5') or '-'}` | `{c.get('model_md5') or '-'}` | {c['trained']} |")
    if card.audit_after:
        lines += ["", *_audit_table(card.audit_after, card.audit_before, card.forgotten)]
    if "histogram" in card.links:
        lines += ["", f"![confidence histogram]({card.links['histogram'][1]})",
                  f"[{card.links['histogram'][0]}]({card.links['histogram'][1]})"]
    return "\n".join(lines) + "\n"


def _audit_table(after: dict, before: dict | None, forgotten: dict | None) -> list[str]:
    n, m = after.get("forget_records", 0), after.get("holdout_records", 0)
    head = (f"#### Audit: {n} erased record(s) against {m} never-seen holdout records"
            + (" (too few erased records to judge)" if n < SMALL_SAMPLE else ""))
    rows = ["| figure | this version | before | floor (data never seen) |", "|---|---|---|---|"]

    def row(label: str, value, previous, floor) -> None:
        rows.append(f"| {label} | {_num(value)} | {_num(previous)} | {_num(floor) if floor is not None else '-'} |")

    row("forget accuracy", after.get("forget_accuracy"), (before or {}).get("forget_accuracy"),
        after.get("test_accuracy"))
    row("test accuracy", after.get("test_accuracy"), (before or {}).get("test_accuracy"), None)
    for name in ATTACKS.names():
        attack = ATTACKS.get(name)
        for key, label in attack.labels.items():
            if key in after:
                text = _num(after[key])
                if key in attack.floors and n and m and after[key] == after[key]:
                    lo, hi = auc_interval(after[key], n, m)
                    text += f" (95% interval {lo:.2f}-{hi:.2f})"
                rows.append(f"| {label} | {text} | {_num((before or {}).get(key))} | "
                            f"{_num(attack.floors[key]) if key in attack.floors else '-'} |")
    if forgotten and forgotten.get("erased_records"):
        row("erased records' mean confidence", forgotten["erased_mean_confidence"], None,
            forgotten["holdout_mean_confidence"])
    return [head, "", *rows]


def _num(value) -> str:
    if value is None:
        return "-"
    return "n/a" if value != value else f"{value:.3f}"
