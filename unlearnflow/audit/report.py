"""One audit of one model version: accuracies, membership-inference scores, a gate,
and a histogram a person can read at a glance.

    forget  = the erased records        retain  = the current training split
    test    = the test split            holdout = never trained on, reserved for audits
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unlearnflow.audit import ATTACKS
from unlearnflow.audit._base import Outputs
from unlearnflow.audit.lira import References
from unlearnflow.config import AuditConfig


def audit(forget: Outputs, retain: Outputs, test: Outputs, holdout: Outputs,
          references: References | None = None) -> dict:
    """Numbers for a model and a forget set (NaN where the forget set is empty): the
    accuracies, then every registered attack's figures (``Attack.audit``); those that need
    LiRA reference models only with ``references``."""
    report = {
        "forget_accuracy": forget.accuracy(),
        "retain_accuracy": retain.accuracy(),
        "test_accuracy": test.accuracy(),
        "forget_records": int(len(forget.labels)),
        "holdout_records": int(len(holdout.labels)),
    }
    sets = {"forget": forget, "retain": retain, "test": test, "holdout": holdout}
    nonfinite = sum(int((~np.isfinite(o.probs)).any(axis=1).sum()) for o in sets.values())
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        if nonfinite:  # a diverged model (e.g. too large an unlearning rate): accuracies only
            report.update({key: float("nan") for key in cls.labels if not cls.needs_references})
        elif not cls.needs_references:
            report.update(cls().audit(sets))
        elif references is not None:
            report.update(cls(references).audit(sets))
    if nonfinite:
        report["nonfinite_outputs"] = nonfinite
    return report


def audit_ensembles(sets: dict, outputs, current, previous=None, references: References | None = None) -> dict:
    """Audit an ensemble (``current``) and, if given, the one it replaced (``previous``) on the
    same record sets {forget, train, test, holdout}; ``outputs(ensemble, name, records)``
    returns that ensemble's aggregated ``Outputs`` on one set. Returns the reports and the
    outputs (for the histogram and the erased records' confidence)."""
    def run(ensemble) -> tuple[dict, dict]:
        out = {name: outputs(ensemble, name, records) for name, records in sets.items()}
        return out, audit(out["forget"], out["train"], out["test"], out["holdout"], references)

    after, report = run(current)
    before, report_before = run(previous) if previous is not None else (None, None)
    return {"after": report, "before": report_before, "outputs_after": after, "outputs_before": before}


HISTOGRAM_LABELS = {"forget": "forget (erased)", "train": "retain", "test": "test"}


def histogram_panels(titles: tuple[str, str], after: dict, before: dict | None = None) -> dict:
    """The panels ``confidence_histogram`` draws: after (and before), forget/retain/test each."""
    panels = {titles[0]: {HISTOGRAM_LABELS[k]: v for k, v in after.items() if k in HISTOGRAM_LABELS}}
    if before:
        panels[titles[1]] = {HISTOGRAM_LABELS[k]: v for k, v in before.items() if k in HISTOGRAM_LABELS}
    return panels


GAP_METRICS = ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_efficacy")


def avg_gap(report: dict, reference: dict) -> float:
    """"Avg Gap" (AMUN, SalUn): mean absolute difference from a retrained reference's
    audit over forget, retain and test accuracy and MIA-efficacy (0 = same as retraining).
    Metrics that are NaN on either side are left out."""
    gaps = [abs(report[k] - reference[k]) for k in GAP_METRICS
            if report[k] == report[k] and reference[k] == reference[k]]
    return float(np.mean(gaps)) if gaps else float("nan")


def gate(report: dict, cfg: AuditConfig, previous_test_accuracy: float | None) -> tuple[bool, list[str]]:
    """Does this version pass the audit thresholds? Returns (passed, reasons it failed)."""
    reasons = []
    if report.get("nonfinite_outputs"):
        reasons.append(f"the model's outputs are not finite for {report['nonfinite_outputs']} records (diverged)")
    auc = report["forget_vs_holdout_mia_auc"]
    if cfg.max_forget_mia_auc is not None and auc == auc and auc > cfg.max_forget_mia_auc:
        reasons.append(f"forget-vs-holdout MIA AUC {auc:.3f} > audit.max_forget_mia_auc {cfg.max_forget_mia_auc}")
    if previous_test_accuracy is not None:
        drop = previous_test_accuracy - report["test_accuracy"]
        if drop > cfg.max_test_accuracy_drop:
            reasons.append(f"test accuracy dropped {drop:.4f} > audit.max_test_accuracy_drop {cfg.max_test_accuracy_drop}")
    return not reasons, reasons


def confidence_histogram(path: Path, panels: dict[str, dict[str, Outputs]]) -> Path:
    """PNG, one panel per model (e.g. after and before an erasure): the true-class
    confidence of each record set (forget / retain / test) as a density."""
    import matplotlib

    matplotlib.use("Agg")
    if not list(Path(matplotlib.get_cachedir()).glob("fontlist-*.json")):
        import logging

        logging.getLogger("unlearnflow").info("matplotlib: building its font cache (first run only, ~10 s)")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, (name, sets) in zip(axes[0], panels.items()):
        for label, out in sets.items():
            if len(out.labels):
                ax.hist(out.confidence, bins=bins, density=True, histtype="step", linewidth=1.8,
                        label=f"{label} (n={len(out.labels)})")
        ax.set_title(name)
        ax.set_xlabel("confidence in the true class")
        ax.set_ylabel("density")
        ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
