"""The lineage card a registered version carries as its MLflow description (pure text)."""

from unlearnflow.lineage_card import Card, render

AFTER = {"forget_accuracy": 1.0, "retain_accuracy": 0.99, "test_accuracy": 0.9620, "forget_records": 6,
         "holdout_records": 446, "forget_vs_holdout_mia_auc": 0.632, "mia_efficacy": 0.5}
BEFORE = {**AFTER, "test_accuracy": 0.9640, "forget_vs_holdout_mia_auc": 0.620}


def card(**changes) -> Card:
    values = dict(version="2", guarantee="exact", made_by="erase run `erase-e1`", data_version="30c3a1",
                  git_commit="abc123", dvc_lock_md5="d41d8c", previous_version="1", requests=("r-9f2",),
                  constituents={"1": {"manifest_md5": "m1", "model_md5": "b1", "trained": "unchanged (no training)"},
                                "0": {"manifest_md5": "m0", "model_md5": "b0", "trained": "retrained from slice 3"}},
                  test_accuracy=0.962, audit_after=AFTER, audit_before=BEFORE,
                  forgotten={"erased_records": 6, "erased_mean_confidence": 0.967, "holdout_mean_confidence": 0.919},
                  links={"certificate": ("0001-e1.json", "#/experiments/1/runs/r/artifacts/certificate/0001-e1.json"),
                         "histogram": ("audit/e1.png", "get-artifact?path=audit%2Fe1.png&run_uuid=r")})
    return Card(**{**values, **changes})


def test_the_card_holds_the_lineage_constituents_in_shard_order_and_links():
    text = render(card())
    assert text.startswith("### Lineage of version 2 (exact guarantee)")
    for row in ("| data version | `30c3a1` |", "| git commit | `abc123` |", "| previous version | v1 |",
                "| requests carried out | `r-9f2` |",
                "| certificate | [0001-e1.json](#/experiments/1/runs/r/artifacts/certificate/0001-e1.json) |",
                "![confidence histogram](get-artifact?path=audit%2Fe1.png&run_uuid=r)"):
        assert row in text
    assert text.index("| 0 | `m0` | `b0` | retrained from slice 3 |") < text.index("| 1 | `m1` | `b1` | unchanged")


def test_audit_figures_stand_beside_the_version_before_and_their_floor_with_the_sample_size():
    text = render(card())
    assert "#### Audit: 6 erased record(s) against 446 never-seen holdout records (too few erased records to judge)" \
        in text
    auc_row = next(line for line in text.splitlines() if line.startswith("| MIA AUC"))
    cells = [c.strip() for c in auc_row.strip("|").split("|")]
    assert cells[1].startswith("0.632 (95% interval 0.") and cells[2] == "0.620" and cells[3] == "0.500"
    assert "| forget accuracy | 1.000 | 1.000 | 0.962 |" in text  # floor: what unseen (test) data gets
    assert "| erased records' mean confidence | 0.967 | - | 0.919 |" in text


def test_a_training_version_has_no_audit_and_nan_reads_as_not_available():
    text = render(card(audit_after=None, audit_before=None, forgotten=None, links={}, requests=()))
    assert "Audit" not in text and "| requests carried out | none |" in text and "certificate" not in text
    nan = render(card(audit_after={**AFTER, "mia_efficacy": float("nan"), "forget_records": 40}))
    assert "n/a" in nan and "too few" not in nan
