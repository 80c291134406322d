"""Backend choice (cuda / cpu), made in one place.

``LUKHAS_GPU_BACKEND=auto|cpu|cuda`` overrides the config's ``backend``. ``auto`` takes CUDA when
torch sees a GPU and falls back to the CPU with one log line. On a machine with no GPU driver at
all (no NVIDIA or ROCm device node) ``auto`` answers ``cpu`` without importing torch, so the
read-only paths (``get``, ``stats``, ``verify``, the CLI) start in a fraction of a second. FAISS GPU support is detected
separately (:func:`faiss_gpus`): the ``gpu`` extra installs faiss-gpu, but torch can use CUDA
without it.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import sys

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda")
ENV_VAR = "LUKHAS_GPU_BACKEND"


def resolve_backend(requested: str = "auto") -> str:
    """Return ``"cuda"`` or ``"cpu"`` for a requested backend, honouring ``LUKHAS_GPU_BACKEND``."""
    env = os.environ.get(ENV_VAR)
    choice = (env or requested or "auto").strip().lower()
    if choice not in BACKENDS:
        source = f"{ENV_VAR}={env!r}" if env else f"backend={requested!r}"
        raise ValueError(f"invalid {source}; valid values: {', '.join(BACKENDS)}")
    if choice == "cpu" or (choice == "auto" and not gpu_driver_present()):
        if choice == "auto":
            _log_cpu_fallback()
        return "cpu"
    import torch

    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'cuda' requested but torch sees no CUDA device "
                               "(install a CUDA build of torch, or use backend='cpu')")
        return "cuda"
    if choice == "auto":
        if torch.cuda.is_available():
            return "cuda"
        _log_cpu_fallback()
    return "cpu"


@functools.lru_cache(maxsize=1)
def _log_cpu_fallback() -> None:
    log.info("lukhas_gpu: no CUDA device visible to torch, using the CPU backend")


#: Device nodes a GPU driver creates; without any of them torch.cuda cannot see a device.
DRIVER_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def gpu_driver_present() -> bool:
    """Whether a GPU driver is visible at all (the cheap check before asking torch)."""
    return any(os.path.exists(p) for p in DRIVER_NODES)


def faiss_module():
    """Import FAISS lazily, with the install hint on failure."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("lukhas_gpu needs FAISS: pip install 'lukhas-gpu[cpu]' "
                          "(or 'lukhas-gpu[gpu]' for faiss-gpu)") from e
    return faiss


def faiss_gpus() -> int:
    """Number of GPUs FAISS itself can use (0 with faiss-cpu)."""
    faiss = faiss_module()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def capabilities() -> dict:
    """A small report of what this process can use, for ``stats()`` and the CLI.

    torch is asked only when it is already imported or a GPU driver is present; otherwise its
    installed version is read from the package metadata and ``cpu_threads`` is None (torch has
    not chosen its threads yet)."""
    faiss = faiss_module()
    torch = sys.modules.get("torch")
    if torch is None and gpu_driver_present():
        import torch
    cuda = bool(torch is not None and torch.cuda.is_available())
    return {
        "torch": torch.__version__ if torch is not None else _dist_version("torch"),
        "faiss": getattr(faiss, "__version__", "?"),
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "faiss_gpus": faiss_gpus(),
        "cpu_threads": torch.get_num_threads() if torch is not None else None,
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
