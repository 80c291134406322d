"""Backend choice (cuda / cpu), made in one place.

``LUKHAS_GPU_BACKEND=auto|cpu|cuda`` overrides the config's ``backend``. ``auto`` takes CUDA when
torch sees a GPU and falls back to the CPU with one log line. FAISS GPU support is detected
separately (:func:`faiss_gpus`): the ``gpu`` extra installs faiss-gpu, but torch can use CUDA
without it.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

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
    """A small report of what this process can use, for ``stats()`` and the CLI."""
    faiss = faiss_module()
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "faiss_gpus": faiss_gpus(),
        "cpu_threads": torch.get_num_threads(),
    }
