"""Where tensors live: ``train.device`` (auto | cpu | cuda | cuda:N) made a torch device.

Results are bitwise reproducible on one device class, not across classes (a GPU's
kernels round differently from the CPU's), so the class is part of every slice
checkpoint's key and of each version's lineage: a constituent trained on an H200
is never resumed from a CPU checkpoint, and a certificate says where it was made.
"""

from __future__ import annotations

import torch

from unlearnflow.errors import ConfigError


def resolve(spec: str) -> torch.device:
    """The torch device for ``train.device``; ``auto`` is the first GPU when one is visible."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device("cuda:0" if spec == "cuda" else spec)
    if device.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= visible:
            raise ConfigError(f"train.device = {spec!r}, but this machine has {visible} visible CUDA device(s); "
                              f"valid choices here: auto, cpu" + "".join(f", cuda:{i}" for i in range(visible)))
    return device


def device_class(device: torch.device) -> str:
    """What results depend on: ``cpu``, or ``cuda/<GPU name>`` (the index does not matter)."""
    if device.type == "cuda":
        return f"cuda/{torch.cuda.get_device_name(device)}"
    return device.type


def set_deterministic(threads: int, device: torch.device | None = None) -> None:
    """Same inputs, same bits: fixed thread count, deterministic kernels; on CUDA also no
    cuDNN autotuning and no TF32. cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the
    environment before it starts (the core reads no environment: ``tasks/`` sets it, and
    torch names it in its error if a caller of the core did not)."""
    torch.set_num_threads(threads)
    if device is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True)
