"""Where a run computes: the torch device named by ``run.device`` / ``--device``, and the
number of CPU threads. Training, evaluation, prediction and the report all choose through here."""

from __future__ import annotations

import torch

from .errors import ConfigError


def pick_device(spec: str | None = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` (or None): the GPU of this rank if CUDA is available, else the CPU;
    ``"cpu"``, ``"cuda"`` (this rank's GPU) or ``"cuda:N"``. ConfigError if CUDA is asked for
    but absent. ``local_rank``: the process's rank on its machine under torchrun."""
    spec = spec or "auto"
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r} is not auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={spec!r} but no CUDA GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def set_threads(threads: int) -> None:
    """torch's CPU threads (``run.threads``); 0 leaves torch's own choice."""
    if threads > 0:
        torch.set_num_threads(threads)
