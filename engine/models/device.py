"""Pick the torch device from the `device` setting."""

from __future__ import annotations

from engine.errors import SettingsError


def resolve_device(choice: str) -> str:
    """'auto' prefers CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if choice == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if choice == "cuda" and not cuda:
        raise SettingsError(
            f"FACECHAIN_DEVICE=cuda but torch {torch.__version__} sees no CUDA GPU: install a CUDA build "
            "of torch or set FACECHAIN_DEVICE=auto."
        )
    if choice == "mps" and not mps:
        raise SettingsError("FACECHAIN_DEVICE=mps but Apple MPS is not available here: set FACECHAIN_DEVICE=auto.")
    return choice
