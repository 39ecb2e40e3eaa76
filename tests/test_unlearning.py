"""Unlearning methods: reference tests on L2-regularised logistic regression (unique
optimum, cheap exact retraining), and tests generated from the registry."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearnflow.config import UnlearnConfig
from unlearnflow.unlearning import UNLEARNERS, Data, Edit, create_unlearner

STEPS = 80
C = 1.0  # objective: sum of losses + C/2 |theta|^2


def logistic_data(n=200, d=5, seed=0, scale=0.5):
    """Standardised features and a weak true signal: the Hessian is close to a multiple of
    the identity, the regime in which a first-order step can close most of the gap."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 1, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64) * scale
    p = torch.sigmoid(x.flatten(1) @ w)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < p).long()
    return x, y


def objective(model, x, y):
    return F.cross_entropy(model(x), y, reduction="sum") + C / 2 * sum((p ** 2).sum() for p in model.parameters())


def fit_logistic(x, y, start=None):
    torch.manual_seed(0)
    model = start or nn.Sequential(nn.Flatten(), nn.Linear(x.shape[-1], 2)).double()
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective(model, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    return model


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def copy_of(model):
    import copy

    return copy.deepcopy(model)


SECOND = UnlearnConfig.everywhere(l2=C, damping=0.0, ihvp_iterations=200, hessian_samples=10_000)


def best_first_order(model, edit, x_rest, y_rest):
    """First order with the unlearning rate tau that minimises the remaining objective
    (a choice a user can make without retraining)."""
    best = None
    for tau in torch.logspace(-4, 0, 41).tolist():
        m, _ = create_unlearner("influence_first_order")(model, edit, None, UnlearnConfig.of("influence_first_order", lr=tau))
        value = float(objective(m, x_rest, y_rest).detach())
        if best is None or value < best[0]:
            best = (value, m)
    return best[1]


def test_second_order_lands_much_closer_to_retraining_than_first_order_for_one_point():
    x, y = logistic_data()
    model = fit_logistic(x, y)
    with torch.no_grad():  # the most influential point: the largest loss
        i = int(F.cross_entropy(model(x), y, reduction="none").argmax())
    keep = torch.arange(len(y)) != i
    retrained = flat(fit_logistic(x[keep], y[keep], start=copy_of(model)))
    edit = Edit(x[i:i + 1], y[i:i + 1])
    second, _ = create_unlearner("influence_second_order")(model, edit, Data(x[keep], y[keep]), SECOND)
    first = best_first_order(model, edit, x[keep], y[keep])
    gap = (flat(model) - retrained).norm()
    d1, d2 = (flat(first) - retrained).norm(), (flat(second) - retrained).norm()
    print(f"gap {gap:.4f}, first order leaves {d1:.4f}, second order {d2:.6f}")
    assert d1 < 0.5 * gap  # first order closes most of the gap
    assert d2 < 0.05 * gap and d2 < d1 / 5  # second order lands much closer


def test_second_order_restores_more_of_a_label_flip_and_predictions_move_toward_retraining():
    x, y = logistic_data(seed=1)
    with torch.no_grad():
        i = int((x.flatten(1) ** 2).sum(1).argmax())  # a far-out point: its wrong label pulls hard
    wrong = y.clone()
    wrong[i] = 1 - y[i]
    model = fit_logistic(x, wrong)
    retrained = fit_logistic(x, y, start=copy_of(model))
    keep = torch.arange(len(y)) != i
    edit = Edit(x[i:i + 1], wrong[i:i + 1], y_new=y[i:i + 1])
    second, _ = create_unlearner("influence_second_order")(model, edit, Data(x[keep], y[keep]), SECOND)
    first = best_first_order(model, edit, x, y)

    def p_true(m):
        with torch.no_grad():
            return float(torch.softmax(m(x[i:i + 1]), 1)[0, y[i]])

    p0, p1, p2, pr = p_true(model), p_true(first), p_true(second), p_true(retrained)
    gap = (flat(model) - flat(retrained)).norm()
    d1, d2 = (flat(first) - flat(retrained)).norm(), (flat(second) - flat(retrained)).norm()
    print(f"p(true label): original {p0:.4f}, first {p1:.4f}, second {p2:.4f}, retrained {pr:.4f}; "
          f"gap {gap:.4f}, first leaves {d1:.4f}, second {d2:.5f}")
    assert abs(p1 - pr) < 0.5 * abs(p0 - pr) and abs(p2 - pr) < 0.5 * abs(p0 - pr)  # both move most of the way
    assert d2 < 0.1 * gap and d2 < d1 / 3  # second order restores more of the flip


@pytest.mark.parametrize("relabel", [False, True], ids=["erase", "relabel"])
def test_last_layer_hessian_equals_the_full_second_order_step_on_a_linear_model(relabel):
    """On a model that is only its last layer, the exact last-layer Newton step and CG on the
    whole model solve the same system."""
    x, y = logistic_data(seed=4)
    model = fit_logistic(x, y)
    i = 7
    keep = torch.arange(len(y)) != i
    edit = Edit(x[i:i + 1], y[i:i + 1], y_new=(1 - y[i:i + 1]) if relabel else None)
    retain = Data(x[keep], y[keep])
    cg, _ = create_unlearner("influence_second_order")(model, edit, retain, SECOND)
    exact, result = create_unlearner("influence_last_layer")(model, edit, retain, SECOND)
    assert result.details["parameters"] == 2 * 6
    moved = (flat(cg) - flat(model)).norm()
    assert moved > 0 and (flat(exact) - flat(cg)).norm() < 1e-6 * moved


def test_removing_a_feature_from_every_record_with_second_order_approaches_retraining():
    x, y = logistic_data(seed=2)
    model = fit_logistic(x, y)
    x_new = x.clone()
    x_new[..., 0] = 0  # feature 0 removed from all records
    retrained = flat(fit_logistic(x_new, y, start=copy_of(model)))
    edit = Edit(x, y, x_new=x_new)
    second, _ = create_unlearner("influence_second_order")(model, edit, Data(x[:0], y[:0]), SECOND)
    gap = (flat(model) - retrained).norm()
    assert (flat(second) - retrained).norm() < 0.2 * gap


def test_lissa_agrees_with_conjugate_gradients():
    x, y = logistic_data(seed=3)
    model = fit_logistic(x, y)
    edit, retain = Edit(x[:1], y[:1]), Data(x[1:], y[1:])
    cg, _ = create_unlearner("influence_second_order")(model, edit, retain, SECOND)
    ls, _ = create_unlearner("influence_second_order")(
        model, edit, retain, SECOND.with_settings("influence_second_order", ihvp="lissa", ihvp_iterations=2000, lissa_scale=2.0))
    assert (flat(ls) - flat(cg)).norm() < 1e-3 * (flat(cg) - flat(model)).norm() + 1e-9


# --- every registered method, on a tiny memorising model --------------------------------

def tiny_task(seed=0):
    """A small MLP that has partly memorised random labels (mean confidence ~0.88, not
    saturated, so that gradients still carry signal)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(240, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (240,), generator=g)  # random labels: only memorisation fits them
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x, y


def forget_confidence(model, x, y) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(x), 1)[torch.arange(len(y)), y].mean())


def certified_logreg(x, y, classes=4, lam=1e-3):
    """The model ``certified_removal`` takes: a logreg at the perturbed optimum (``train.certified``)."""
    from unlearnflow import certified
    from unlearnflow.config import CertifiedConfig
    from unlearnflow.models import create_model

    cfg = CertifiedConfig(lam=lam, sigma=0.01)
    model = create_model("logreg", tuple(x.shape[1:]), classes, seed=0)
    model.set_certified(certified.train(certified.features(x), y, classes, cfg, seed=5), cfg, seed=5)
    return model.eval()


@pytest.mark.parametrize("use_retain", [True, False], ids=["with-retain", "without-retain"])
@pytest.mark.parametrize("name", UNLEARNERS.names())
def test_every_method_lowers_confidence_on_the_forget_set(name, use_retain):
    model, x, y = tiny_task()
    forget, retain = Edit(x[:12], y[:12], train_size=len(y)), Data(x[12:], y[12:])
    # one setting for every method that has it (scale, fisher's alone, at the scale this tiny MLP needs)
    cfg = UnlearnConfig.everywhere(lr=0.05, epochs=10, use_retain=use_retain, scale=1e-5)
    method = create_unlearner(name)
    if method.accepts(model):  # a method for one kind of model (certified_removal): that model
        with pytest.raises(ValueError, match=f"method '{name}' cannot update this model"):
            method(model, forget, retain, replace(cfg, use_retain=True))
        model = certified_logreg(x, y)
    if method.needs_retain and not use_retain:
        with pytest.raises(ValueError, match=f"method '{name}' needs retain data"):
            method(model, forget, retain, cfg)
        return
    before = forget_confidence(model, x[:12], y[:12])
    updated, result = method(model, forget, retain, cfg)
    after = forget_confidence(updated, x[:12], y[:12])
    assert result.method == name and result.seconds > 0
    assert result.used_retain == (use_retain and method.can_use_retain)
    assert after < before - 0.01, (before, after, result.details)
    assert forget_confidence(model, x[:12], y[:12]) == before  # the input model is left untouched


def test_an_unknown_method_names_the_valid_ones():
    with pytest.raises(Exception, match="unknown unlearning method 'magic'; valid choices: 'amun', 'certified_removal', 'finetune'"):
        create_unlearner("magic")


# --- the fast path's core: edits per shard, and the updated constituent -----------------

def test_shard_edits_split_erasures_corrections_and_retain(tmp_path):
    from conftest import make_records
    from unlearnflow.approximate import approximate_constituent, shard_edits
    from unlearnflow.config import PartitionConfig, TrainConfig
    from unlearnflow.ensemble import constituent_bytes, load_constituent
    from unlearnflow.partition import partition
    from unlearnflow.training import ModelSpec, train_constituent

    (manifest, images), = partition(make_records(60), PartitionConfig(shards=(0,), slices=2))
    ids, labels = manifest.record_ids, manifest.labels
    erased = {ids[0], ids[5]}
    rectified = {ids[7]: (labels[7] + 1) % 4, ids[0]: 3, ids[9]: labels[9]}  # ids[0] is erased; ids[9] unchanged
    erase, relabel, _, retain = shard_edits(manifest, images, erased, rectified)
    assert erase.erases and len(erase.y) == 2 and erase.train_size == 60
    assert relabel.y.tolist() == [labels[7]] and relabel.y_new.tolist() == [(labels[7] + 1) % 4]
    assert len(retain) == 57  # every affected record left out of retain
    assert shard_edits(manifest, images, set(), {})[:3] == (None, None, None)

    spec = ModelSpec("mlp", (1, 8, 8), 4)
    path = tmp_path / "shard_0.pt"
    result = train_constituent(manifest, images, spec, TrainConfig(model="mlp", epochs=2))
    path.write_bytes(constituent_bytes(spec, result.state_dict, result.slice_keys, 0))
    cfg = UnlearnConfig.of("finetune", epochs=1)
    assert approximate_constituent(path, manifest, images, set(), {}, cfg) is None
    data, results = approximate_constituent(path, manifest, images, erased, rectified, cfg)
    assert [r.method for r in results] == ["finetune", "finetune"]  # erase, then relabel
    updated = tmp_path / "updated.pt"
    updated.write_bytes(data)
    model, meta = load_constituent(updated)
    assert meta["slice_keys"] == result.slice_keys and data != path.read_bytes()


def test_retain_data_leaves_out_what_an_earlier_fast_path_already_applied():
    from conftest import make_records
    from unlearnflow.approximate import shard_edits
    from unlearnflow.config import PartitionConfig
    from unlearnflow.partition import partition

    (manifest, images), = partition(make_records(40), PartitionConfig(shards=(0,), slices=2))
    ids, labels = manifest.record_ids, list(manifest.labels)
    erase, relabel, _, retain = shard_edits(manifest, images, {ids[0]}, {}, earlier_erased={ids[1], ids[2]},
                                         earlier_rectified={ids[3]: (labels[3] + 1) % 4})
    assert len(retain) == 40 - 3 and erase.train_size == 38 and relabel is None
    assert retain.y.tolist()[0] == (labels[3] + 1) % 4  # ids[3] is the first record kept, with its corrected label
    assert list(manifest.labels) == labels  # the manifest itself is untouched


def test_a_feature_edit_takes_records_from_their_trained_pixels_to_their_filled_ones():
    from conftest import make_records
    from unlearnflow.approximate import shard_edits
    from unlearnflow.config import PartitionConfig
    from unlearnflow.features import FeatureEdit
    from unlearnflow.partition import partition
    from unlearnflow.training import to_input

    (manifest, images), = partition(make_records(40), PartitionConfig(shards=(0,), slices=2))
    ids, labels = manifest.record_ids, list(manifest.labels)
    square = FeatureEdit((0, 0, 3, 3), "255")
    erase, relabel, feature, retain = shard_edits(manifest, images, set(), {ids[4]: (labels[4] + 1) % 4},
                                                  features={ids[4]: [square], ids[6]: [square]},
                                                  earlier_features={ids[0]: [square]})
    assert erase is None and relabel is None and len(retain) == 40 - 2
    assert torch.equal(feature.x, to_input(np.asarray(images)[[4, 6]]))  # as trained on
    assert (feature.x_new[:, :, :3, :3] == 1.0).all() and torch.equal(feature.x_new[:, :, 3:], feature.x[:, :, 3:])
    assert feature.y_new.tolist() == [(labels[4] + 1) % 4, labels[6]]  # the label filed with it, the other kept
    assert (retain.x[0, :, :3, :3] == 1.0).all()  # ids[0]: already filled by an earlier fast path


@pytest.mark.parametrize("mode", ["full", "batch"])
def test_amun_passes_over_retain_data_as_configured(mode):
    import math

    model, x, y = tiny_task()
    forget, retain = Edit(x[:12], y[:12]), Data(x[12:], y[12:])
    cfg = UnlearnConfig.of("amun", epochs=2, batch_size=32, retain=mode)
    _, result = create_unlearner("amun")(model, forget, retain, cfg)
    fine_tuned = 12 + 12 + (len(retain) if mode == "full" else 0)  # forget + adversarial (+ every retain record)
    assert result.details["steps"] == 2 * math.ceil(fine_tuned / 32)
    assert result.details["flipped"] == 1.0  # every adversarial example found changes the prediction


def test_amun_adversarial_examples_stay_valid_images():
    from unlearnflow.unlearning.amun import nearest_adversarial

    model, x, y = tiny_task()
    adv, label, eps = nearest_adversarial(model, x[:20], y[:20], steps=10, eps_init=None, doublings=8)
    assert adv.min() >= 0 and adv.max() <= 1
    assert ((adv - x[:20]).flatten(1).norm(dim=1) <= eps + 1e-5).all()


def test_the_methods_command_lists_every_registered_method(capsys):
    from conftest import cli

    assert cli("methods") == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in out for name in ["sisa", *UNLEARNERS.names()]), out
    assert "certified_removal" in UNLEARNERS.names() and "influence_last_layer" in UNLEARNERS.names()


def test_methods_for_one_kind_of_model_refuse_other_configs_by_name():
    from unlearnflow.config import CertifiedConfig, TrainConfig

    cr, last = UNLEARNERS.get("certified_removal"), UNLEARNERS.get("influence_last_layer")
    assert "train.certified" in cr.refuses(TrainConfig(model="cnn"))
    assert cr.refuses(TrainConfig(model="logreg", certified=CertifiedConfig())) is None
    assert "cnn or mlp" in last.refuses(TrainConfig(model="resnet18"))
    assert last.refuses(TrainConfig(model="cnn")) is None and last.refuses(TrainConfig(model="mlp")) is None
    assert all(UNLEARNERS.get(n).refuses(TrainConfig(model="resnet18")) is None
               for n in UNLEARNERS.names() if n not in ("certified_removal", "influence_last_layer"))
    # the config check and the model check agree on the models the pipeline builds
    from unlearnflow.models import create_model
    for name in ("cnn", "mlp", "resnet18", "logreg"):
        model = create_model(name, (1, 8, 8) if name == "mlp" else (3, 32, 32), 4, seed=0)
        assert (last.refuses(TrainConfig(model=name)) is None) == (last().accepts(model) is None), name


# --- Fisher forgetting and SalUn on a small convex model ----------------------------------

def private_feature_task(n=200, forget=10, seed=0):
    """Logistic regression (convex) on 6 features; the forget records alone carry a 7th, with
    labels only it explains: the model fits them through weights the retain data never uses."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 1, 7, dtype=torch.float64)
    x[:, 0, 0, :6] = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0, 0, 0] > 0).long()
    x[:forget, 0, 0, 6] = 3.0
    y[:forget] = 1 - y[:forget]  # wrong by the shared features: memorised through the private one
    model = fit_logistic(x, y)
    return model, x, y, forget


def mean_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


@pytest.mark.parametrize("name, cfg", [
    ("fisher", UnlearnConfig.of("fisher", scale=1e-4, max_variance=25.0)),
    ("salun", UnlearnConfig.of("salun", lr=0.05, epochs=10, sparsity=0.5)),
])
def test_fisher_and_salun_raise_the_forget_loss_and_keep_the_retain_loss_within_a_bound(name, cfg):
    """Bound: the retain loss rises by at most 0.1 nats, while the forget loss rises by at least 1 nat."""
    model, x, y, k = private_feature_task()
    forget, retain = Edit(x[:k], y[:k], train_size=len(y)), Data(x[k:], y[k:])
    updated, result = create_unlearner(name)(model, forget, retain, cfg)
    before_f, after_f = mean_loss(model, x[:k], y[:k]), mean_loss(updated, x[:k], y[:k])
    before_r, after_r = mean_loss(model, x[k:], y[k:]), mean_loss(updated, x[k:], y[k:])
    assert after_r - before_r <= 0.1, (before_r, after_r, result.details)
    assert after_f >= before_f + 1.0, (before_f, after_f, result.details)


# --- one settings section per method ----------------------------------------------------------

def test_params_yaml_has_one_section_per_method_with_exactly_its_declared_settings_and_defaults():
    import dataclasses

    import yaml
    from conftest import REPO_ROOT
    from unlearnflow.config import parse_params
    from unlearnflow.unlearning import Settings, settings_of

    cfg = parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())).unlearn
    assert sorted(cfg.methods) == UNLEARNERS.names() and cfg.flat == {}
    shared = {f.name for f in dataclasses.fields(Settings)}
    for name in UNLEARNERS.names():
        declared = UNLEARNERS.get(name).Settings
        assert declared is not Settings and declared.section == f"unlearn.{name}", name  # its own, in its module
        own = {f.name: f.default for f in dataclasses.fields(declared) if f.name not in shared}
        assert cfg.methods[name] == own, name  # every setting, at its default: params.yaml documents them all
        assert settings_of(name, cfg) == declared()


@pytest.mark.parametrize("section, message", [
    ({"amun": {"lr": -1}}, "unlearn.amun.lr = -1.0 is invalid: expected a positive number"),
    ({"amun": {"retain": "half"}}, "unlearn.amun.retain = 'half' is invalid: expected 'full' or 'batch'"),
    ({"salun": {"lr": 0.1, "sparsty": 0.5}}, "unknown key(s) sparsty in unlearn.salun; valid keys: epochs, lr, "
                                             "sparsity"),
    ({"fisher": {"scale": "small"}}, "unlearn.fisher.scale = 'small' is invalid: expected a number"),
    ({"amn": {"lr": 0.1}}, "unlearn.amn is not a method; valid sections: amun, certified_removal"),
    ({"finetune": {"seed": 3}}, "unlearn.finetune.seed is set under unlearn: for every method"),
    ({"certified_removal": {"lr": 1}}, "valid keys: none (certified_removal has no settings of its own)"),
    ({"lr": "fast"}, "unlearn.amun.lr = 'fast' is invalid: expected a number (written flat under unlearn: as "
                     "unlearn.lr)"),
])
def test_a_bad_method_setting_is_one_line_naming_its_section_and_the_valid_keys(section, message):
    from unlearnflow.config import parse_params
    from unlearnflow.errors import ConfigError
    from unlearnflow.unlearning import check_settings

    with pytest.raises(ConfigError) as err:
        check_settings(parse_params({"unlearn": section}).unlearn)
    assert message in str(err.value)


def test_a_workspace_written_in_the_old_flat_form_still_loads_and_is_told_where_each_setting_moves(tmp_path, capsys):
    """The unlearn: section every workspace got before one section per method (flat lr, epochs,
    use_retain, amun_retain): each method reads what it read then, and a command says where to move them."""
    import yaml
    from conftest import cli
    from test_guarantee import make_workspace
    from unlearnflow.unlearning import flat_notice, settings_of

    root = make_workspace(tmp_path / "ws")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["unlearn"] = {"method": "amun", "lr": 0.05, "epochs": 3, "use_retain": True, "amun_retain": "batch",
                         "damping": 0.5}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from tasks.workspace import Workspace

    cfg = Workspace(root).load_params().unlearn
    amun = settings_of("amun", cfg)
    assert (amun.lr, amun.epochs, amun.retain) == (0.05, 3, "batch")
    assert settings_of("influence_second_order", cfg).damping == 0.5 and settings_of("salun", cfg).lr == 0.05
    notice = flat_notice(cfg)
    assert "unlearn.amun_retain -> unlearn.amun.retain" in notice and "unlearn.damping -> " \
        "unlearn.influence_last_layer.damping, unlearn.influence_second_order.damping" in notice
    capsys.readouterr()
    assert cli("rectify", "-C", str(root), "--region", "0,0,9,9", "--subject", "s001") == 2  # a command that loads them
    err = capsys.readouterr().err
    assert "warning: params.yaml sets method settings flat under unlearn:" in err and "Move them: " in err
