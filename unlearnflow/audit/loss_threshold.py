"""loss_threshold: members have lower loss. AUC of -loss, members vs non-members
(0.5 = indistinguishable; the forget set should look like data never seen)."""

from unlearnflow.audit._base import Attack, Outputs, auc, register_attack


@register_attack
class LossThreshold(Attack):
    name = "loss_threshold"

    def score(self, members: Outputs, non_members: Outputs, target: Outputs | None = None) -> dict:
        return {"auc": auc(-members.loss, -non_members.loss)}
