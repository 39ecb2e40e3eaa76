"""Typed configuration: ``params.yaml`` becomes frozen dataclasses, once.

Each pipeline stage receives only its own section (``DataConfig`` for prepare,
``PartitionConfig`` for partition, ...), which is also the section its DVC stage
lists under ``params:``, so a changed value reruns only the stages that read it.

The parser rejects unknown keys and wrong types with a message naming the key,
the bad value and the valid choices. Reading the YAML file is the caller's job
(``tasks.workspace``): the core never touches files it was not handed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field

from unlearnflow.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Which records exist and how they split into train / test / holdout."""

    dataset: str = "mnist5k"  # mnist5k | digits | imagefolder:PATH | synthetic:N | mnist | fashion-mnist | cifar10
    subjects_csv: str | None = None  # imagefolder only: CSV with columns file,subject
    image_size: int = 32  # imagefolder only: images are resized to image_size x image_size
    records_per_subject: int = 5  # packaged datasets: how many records each synthetic subject owns
    test_fraction: float = 0.1
    holdout_fraction: float = 0.1  # unseen by training; reserved for privacy audits
    split_seed: int = 0

    def __post_init__(self):
        _check(0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction, "a number in (0, 1)")
        _check(0 <= self.holdout_fraction < 1, "data.holdout_fraction", self.holdout_fraction, "a number in [0, 1)")
        _check(
            self.test_fraction + self.holdout_fraction < 1,
            "data.test_fraction + data.holdout_fraction",
            self.test_fraction + self.holdout_fraction,
            "less than 1 (something must be left to train on)",
        )
        _check(self.records_per_subject >= 1, "data.records_per_subject", self.records_per_subject, "an integer >= 1")
        _check(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")

    @property
    def dataset_name(self) -> str:
        return self.dataset.split(":", 1)[0]

    @property
    def dataset_arg(self) -> str | None:
        return self.dataset.split(":", 1)[1] if ":" in self.dataset else None


@dataclass(frozen=True)
class PartitionConfig:
    """SISA layout: S shards (one constituent each), R slices per shard."""

    shards: tuple[int, ...] = (0, 1, 2, 3, 4)  # a list 0..S-1; DVC's foreach generates train@k from it
    slices: int = 4
    key: str = "subject"  # subject | record: what is hashed to place a record
    seed: int = 0
    overlap: float = 0.0  # 0: stage k trains on slices 1..k; (0, 0.5]: on slice k + a share of k-1 (see partition.py)

    def __post_init__(self):
        n = len(self.shards)
        _check(
            n >= 1 and list(self.shards) == list(range(n)),
            "partition.shards",
            list(self.shards),
            f"the list of shard indices 0..S-1, e.g. {list(range(max(n, 1)))} for S={max(n, 1)}",
        )
        _check(self.slices >= 1, "partition.slices", self.slices, "an integer >= 1")
        _check(self.key in ("subject", "record"), "partition.key", self.key, "'record' or 'subject'")
        _check(0 <= self.overlap <= 0.5, "partition.overlap", self.overlap,
               "a number in [0, 0.5] (0 = disjoint slices, 0.5 = each stage shares half its records with the previous)")

    @property
    def num_shards(self) -> int:
        return len(self.shards)


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD for every constituent (``unlearnflow/dp.py``, Opacus): per-example gradients
    clipped to ``max_grad_norm``, Gaussian noise of ``noise_multiplier`` x that norm, batches
    drawn by Poisson sampling; (epsilon, ``delta``) accounted with Renyi DP per constituent."""

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self):
        _check(self.noise_multiplier > 0, "train.dp.noise_multiplier", self.noise_multiplier, "a positive number")
        _check(self.max_grad_norm > 0, "train.dp.max_grad_norm", self.max_grad_norm, "a positive number")
        _check(0 < self.delta < 1, "train.dp.delta", self.delta, "a number in (0, 1), e.g. 1e-5")


@dataclass(frozen=True)
class CertifiedConfig:
    """Certified removal (``unlearnflow/certified.py``, Guo et al. 2020) for ``train.model: logreg``:
    each constituent is trained to the optimum of an L2-regularised logistic loss plus a random
    linear term (standard deviation ``sigma``); the ``certified_removal`` method then removes
    records by a Newton step while the accumulated gradient-residual bound keeps the model
    (``epsilon``, ``delta``)-indistinguishable from one retrained without them, and retrains past that."""

    lam: float = 0.01  # L2 strength per record: the objective carries lam * n / 2 * |w|^2
    sigma: float = 1.0  # standard deviation of the loss perturbation
    epsilon: float = 1.0
    delta: float = 1e-4

    def __post_init__(self):
        _check(self.lam > 0, "train.certified.lam", self.lam, "a positive number")
        _check(self.sigma > 0, "train.certified.sigma", self.sigma, "a positive number")
        _check(self.epsilon > 0, "train.certified.epsilon", self.epsilon, "a positive number")
        _check(0 < self.delta < 1, "train.certified.delta", self.delta, "a number in (0, 1), e.g. 1e-4")


@dataclass(frozen=True)
class TrainConfig:
    """How one constituent is trained, slice by slice.

    ``epochs`` is a budget in passes over the whole shard; it is spread over the
    R slice stages as in the SISA paper (each stage runs 2E/(R+1) epochs over
    slices 1..k), so slicing costs no more computation than training once.
    Every field but two changes the weights, so those are part of the checkpoint key:
    ``device`` enters it as its device class (``cpu``, ``cuda/<GPU name>``), and
    ``loader_workers`` only changes how fast batches are read, not which.
    """

    model: str = "cnn"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.001
    weight_decay: float = 0.0
    augment: bool = True  # random small affine transforms of each image, from a seeded generator
    seed: int = 0
    threads: int = 1  # torch intra-op threads; results depend on it, so it is fixed, not guessed
    device: str = "auto"  # auto | cpu | cuda | cuda:N (auto: the first GPU if one is visible, else cpu)
    loader_workers: int = 0  # DataLoader processes reading batches from disk (0: the training process)
    dp: DPConfig | None = None  # DP-SGD (Opacus); null = ordinary training
    certified: CertifiedConfig | None = None  # logreg only: trained for certified removal; null = Adam

    def __post_init__(self):
        _check(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, "train.lr", self.lr, "a positive number")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.threads >= 1, "train.threads", self.threads, "an integer >= 1")
        _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "train.device", self.device,
               "'auto', 'cpu', 'cuda' or 'cuda:N'")
        _check(self.loader_workers >= 0, "train.loader_workers", self.loader_workers, "an integer >= 0")
        _check(self.certified is None or self.model == "logreg", "train.model", self.model,
               "'logreg' when train.certified is set (certified removal is defined for a linear model)")
        _check(self.certified is None or self.dp is None, "train.dp", "set",
               "null when train.certified is set (one or the other)")

    def stage_epochs(self, slices: int, overlap: float = 0.0) -> int:
        """Epochs per slice stage, at least 1, so that R stages cost about E passes over the shard:
        2E/(R+1) when stage k sees slices 1..k (SISA epoch calibration); E(1 - overlap) when it
        sees one overlapping window of n/(R(1 - overlap)) records (``partition.overlap``)."""
        if overlap:
            return max(1, round(self.epochs * (1 - overlap)))
        return max(1, round(2 * self.epochs / (slices + 1)))


@dataclass(frozen=True)
class AggregateConfig:
    method: str = "softmax_mean"  # softmax_mean | majority_vote


@dataclass(frozen=True)
class PromoteConfig:
    """A registered version gets the ``production`` alias only if it passes these."""

    min_test_accuracy: float = 0.0

    def __post_init__(self):
        _check(0 <= self.min_test_accuracy <= 1, "promote.min_test_accuracy", self.min_test_accuracy, "a number in [0, 1]")


@dataclass(frozen=True)
class AuditConfig:
    """The audit gate: an erased version that fails it is registered but not promoted."""

    max_forget_mia_auc: float | None = None  # loss-threshold AUC, erased records vs holdout; null = no limit
    max_test_accuracy_drop: float = 0.05  # vs the version in production before the erasure
    lira_references: int = 0  # K reference models for the LiRA attack (even, >= 2); 0 = off
    sample: int = 5000  # records per split an audit scores (a fixed subset by record id hash); 0 = all

    def __post_init__(self):
        _check(self.lira_references == 0 or (self.lira_references >= 2 and self.lira_references % 2 == 0),
               "audit.lira_references", self.lira_references, "0 (off) or an even number >= 2")
        _check(self.max_forget_mia_auc is None or 0 <= self.max_forget_mia_auc <= 1, "audit.max_forget_mia_auc",
               self.max_forget_mia_auc, "a number in [0, 1] or null")
        _check(self.sample >= 0, "audit.sample", self.sample, "an integer >= 0 (0 = every record)")
        _check(0 <= self.max_test_accuracy_drop <= 1, "audit.max_test_accuracy_drop", self.max_test_accuracy_drop,
               "a number in [0, 1]")


EXACT_METHOD = "sisa"  # unlearn.method for the exact erase flow alone; any other name is an approximate method


# Settings written flat under ``unlearn:`` before each method had its own section, and the
# field of a method's settings each one becomes (applied, as then, to every method that has it).
FLAT_SETTINGS = {"lr": "lr", "epochs": "epochs", "l2": "l2", "damping": "damping", "ihvp": "ihvp",
                 "ihvp_iterations": "ihvp_iterations", "hessian_samples": "hessian_samples",
                 "lissa_scale": "lissa_scale", "pgd_steps": "pgd_steps", "eps_init": "eps_init",
                 "eps_doublings": "eps_doublings", "fisher_scale": "scale", "fisher_max_variance": "max_variance",
                 "salun_sparsity": "sparsity", "amun_retain": "retain"}


@dataclass(frozen=True)
class UnlearnConfig:
    """Which approximate unlearning method serves first, the knobs every method shares, and
    one section per method (``methods``: {name: {setting: value}}, as params.yaml writes them
    under ``unlearn.<name>:``). Each method declares its settings as a dataclass in its own
    module (``unlearnflow/unlearning/<name>.py``); ``unlearning.settings_of`` types a section
    there (this module imports no method: torch stays out of parsing params.yaml).

    ``flat``: settings written the old way, directly under ``unlearn:`` (``FLAT_SETTINGS``), by
    the name of the setting they become; they apply to every method that has such a setting,
    and commands say where to move them."""

    method: str = EXACT_METHOD  # sisa (exact only) or an approximate method for the fast path: `unlearnflow methods`
    use_retain: bool = True  # may the method read retain data (for methods that can do without)?
    batch_size: int = 64
    seed: int = 0
    methods: dict = field(default_factory=dict)  # {method: {setting: value}}: unlearn.<method>
    flat: dict = field(default_factory=dict)  # {setting: value} for every method that has it (old flat form)

    def __post_init__(self):
        _check(self.batch_size >= 1, "unlearn.batch_size", self.batch_size, "an integer >= 1")

    COMMON = ("use_retain", "batch_size", "seed")

    @classmethod
    def of(cls, method: str, **settings) -> "UnlearnConfig":
        """``method`` with these settings in its section (``use_retain``, ``batch_size``, ``seed``:
        the shared knobs)."""
        common = {k: settings.pop(k) for k in cls.COMMON if k in settings}
        return cls(method=method, methods={method: settings}, **common)

    @classmethod
    def everywhere(cls, **settings) -> "UnlearnConfig":
        """These settings for every method that has them (as the flat form applies them)."""
        common = {k: settings.pop(k) for k in cls.COMMON if k in settings}
        return cls(flat=settings, **common)

    def with_settings(self, method: str, **settings) -> "UnlearnConfig":
        """The same config serving ``method``, its section updated with ``settings``."""
        common = {k: settings.pop(k) for k in self.COMMON if k in settings}
        sections = {**self.methods, method: {**self.methods.get(method, {}), **settings}}
        return dataclasses.replace(self, method=method, methods=sections, **common)


def _build_unlearn(raw: dict, where: str) -> UnlearnConfig:
    """``unlearn:``: the shared keys, a mapping per method (typed later, by the method), and
    old flat settings (``FLAT_SETTINGS``); any other key is refused naming the valid ones."""
    shared = {f.name for f in dataclasses.fields(UnlearnConfig)} - {"methods", "flat"}
    common, sections, flat = {}, {}, {}
    for key, value in raw.items():
        if key in shared:
            common[key] = value
        elif isinstance(value, dict):
            sections[key] = dict(value)
        elif value is None and key not in FLAT_SETTINGS:
            sections[key] = {}  # "amun:" with nothing under it: the defaults
        elif key in FLAT_SETTINGS:
            flat[FLAT_SETTINGS[key]] = value
        else:
            raise ConfigError(f"unknown key {key} in {where}: expected {', '.join(sorted(shared))}, or a method's "
                              f"section (a mapping under its name, e.g. {where}.amun: {{lr: 0.01}})")
    return _build(UnlearnConfig, {**common, "methods": sections, "flat": flat}, where, mappings=("methods", "flat"))


@dataclass(frozen=True)
class RetentionConfig:
    """What happens to superseded model versions after an erasure (they saw the erased data)."""

    keep_superseded: bool = False  # default: delete their stored model files
    reason: str | None = None  # required when keeping them; recorded on every kept version

    def __post_init__(self):
        _check(not self.keep_superseded or bool(self.reason), "retention.reason", self.reason,
               "a reason (e.g. a legal hold reference) when retention.keep_superseded is true")


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "unlearnflow"
    registered_model: str = "unlearnflow-sisa"


@dataclass(frozen=True)
class RunnerConfig:
    """Where per-shard training runs: threads or processes here, or a Dask cluster."""

    kind: str = "threads"  # threads | processes | dask
    workers: int = 2
    address: str | None = None  # dask only: scheduler address, e.g. tcp://10.0.0.5:8786

    def __post_init__(self):
        _check(self.kind in ("threads", "processes", "dask"), "runner.kind", self.kind, "'dask', 'processes' or 'threads'")
        _check(self.workers >= 1, "runner.workers", self.workers, "an integer >= 1")


@dataclass(frozen=True)
class WitnessConfig:
    """A witness (c2sp.org/tlog-witness) that cosigns the erasure log's checkpoints."""

    url: str = ""  # its submission prefix: POST <url>/add-checkpoint
    key: str = ""  # its verifier key, <name>+<key id>+<base64 of 0x04 || Ed25519 public key>

    def __post_init__(self):
        _check(self.url.startswith(("http://", "https://")), "lineage.witnesses[].url", self.url,
               "an http:// or https:// URL (the witness's submission prefix)")
        _check(self.key.count("+") >= 2 and bool(self.key.split("+", 1)[0]), "lineage.witnesses[].key", self.key,
               "the witness's verifier key: <name>+<key id hex>+<base64> (`unlearnflow witness key` prints it)")


@dataclass(frozen=True)
class LineageConfig:
    """The erasure log's witnesses: each new checkpoint is sent to each for a cosignature before
    production moves. One that does not answer is recorded as a gap (the next checkpoint brings
    it up to date); one that refuses (the history differs from what it cosigned) stops promotion."""

    witnesses: tuple[WitnessConfig, ...] = ()
    witness_timeout_seconds: float = 5.0

    def __post_init__(self):
        _check(self.witness_timeout_seconds > 0, "lineage.witness_timeout_seconds", self.witness_timeout_seconds,
               "a positive number of seconds")
        names = [w.key.split("+", 1)[0] for w in self.witnesses]
        _check(len(set(names)) == len(names), "lineage.witnesses", names, "witnesses with distinct key names")


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    lineage: LineageConfig = field(default_factory=LineageConfig)

    def __post_init__(self):
        _check(self.train.certified is None or not self.partition.overlap, "partition.overlap",
               self.partition.overlap, "0 when train.certified is set (each stage trains to the optimum "
               "on slices 1..k)")

    def to_dict(self) -> dict:
        return to_dict(self)


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is invalid: expected {expected}")


def parse_params(raw: dict | None) -> Params:
    """Build ``Params`` from the dict read out of params.yaml (missing keys take defaults)."""
    return _build(Params, raw or {}, "params")


def _build(cls, raw, where: str, mappings: tuple[str, ...] = ()):
    """``cls`` from ``raw`` (unknown keys refused, each value coerced to its field's type);
    the fields named in ``mappings`` are taken as they are (dicts)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__} {raw!r}")
    if cls is UnlearnConfig and not mappings:
        return _build_unlearn(raw, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = value if name in mappings else _coerce(hints[name], value,
                                                              f"{where}.{name}" if where != "params" else name)
    return cls(**kwargs)


def build_settings(cls, raw: dict, where: str):
    """A method's settings dataclass from its section (``unlearning.settings_of``)."""
    return _build(cls, raw, where)


def _coerce(tp, value, key: str):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} is invalid: expected a list")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is invalid: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} is invalid: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} is invalid: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} is invalid: expected a string")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def to_dict(obj) -> dict:
    """Plain dict of a config dataclass (tuples become lists), e.g. for logging."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, dict):
            v = {k: dict(x) if isinstance(x, dict) else x for k, x in v.items()}
        elif isinstance(v, tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        out[f.name] = v
    return out
