"""The split workspace (fp32 partials, sized by the plan) of eager calls: one per CUDA stream, grown as needed and
reused, since calls on one stream run one after the other. Saves an allocation per call. A call being captured
into a CUDA graph gets its own allocation instead (from the graph's pool, kept alive by the graph)."""
from __future__ import annotations

import torch

_WORKSPACES: dict[int, torch.Tensor] = {}


def stream_workspace(stream: int, numel: int, device: torch.device) -> torch.Tensor:
    if torch._C._cuda_isCurrentStreamCapturing():
        return torch.empty(numel, dtype=torch.float32, device=device)
    workspace = _WORKSPACES.get(stream)  # (stream handles are unique across devices)
    if workspace is None or workspace.numel() < numel:
        workspace = torch.empty(numel, dtype=torch.float32, device=device)
        _WORKSPACES[stream] = workspace
    return workspace


def clear() -> None:
    """Free the stream workspaces."""
    _WORKSPACES.clear()
