"""Which device a launcher worker uses.

Hydra launchers (joblib on one node, SLURM, Ray) start one job per override set and number
them (``hydra.job.num``). With ``model.device=auto`` on a node with several GPUs, job ``k``
takes ``cuda:(k mod n_gpus)``, so jobs running side by side spread over the GPUs instead of
all landing on ``cuda:0``. SLURM and Ray give each job its own GPU(s) through
``CUDA_VISIBLE_DEVICES``, where the count is 1 and every job uses its ``cuda:0``.
"""

from __future__ import annotations


def gpu_for_job(device: str, job_num: int | None, n_gpus: int) -> str:
    """The device job ``job_num`` should use; anything but ``auto`` is the user's choice and
    kept, as is ``auto`` outside a multirun (``job_num`` None) or without CUDA."""
    if str(device).strip().lower() != "auto" or job_num is None or n_gpus < 1:
        return device
    return f"cuda:{job_num % n_gpus}"


def hydra_job_num() -> int | None:
    """``hydra.job.num`` of the running multirun job (None in a single run or outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return int(HydraConfig.get().job.num)


def assign_device(device: str) -> str:
    """:func:`gpu_for_job` for this process (Hydra job number, visible CUDA devices)."""
    import torch
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return gpu_for_job(device, hydra_job_num(), n_gpus)
