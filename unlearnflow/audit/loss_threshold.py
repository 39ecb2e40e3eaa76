"""loss_threshold: members have lower loss. AUC of -loss, members vs non-members
(0.5 = indistinguishable; the forget set should look like data never seen)."""

from unlearnflow.audit._base import Attack, Outputs, auc, register_attack


@register_attack
class LossThreshold(Attack):
    name = "loss_threshold"
    labels = {"forget_vs_holdout_mia_auc": "MIA AUC, forget vs holdout (0.5 = unseen)"}
    floors = {"forget_vs_holdout_mia_auc": 0.5}

    def score(self, members: Outputs, non_members: Outputs, target: Outputs | None = None) -> dict:
        return {"auc": auc(-members.loss, -non_members.loss)}

    def audit(self, sets: dict[str, Outputs]) -> dict[str, float]:
        forget, holdout = sets["forget"], sets["holdout"]
        return {"forget_vs_holdout_mia_auc": self.score(forget, holdout)["auc"] if len(forget.labels) else float("nan")}
