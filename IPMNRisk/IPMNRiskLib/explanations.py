"""Gradient-weighted attention rollout (Chefer, Gur and Wolf, ICCV 2021, "Generic
Attention-model Explainability"): which patches drove the score of one class.

Per block l, with A_l the attention probabilities (B, H, N, N, class token included) and
∇A_l the gradient of the target class's logit with respect to them:

    Ā_l = mean over heads of relu(∇A_l ⊙ A_l)
    R_0 = I,   R_l = R_{l-1} + Ā_l R_{l-1}            (first block first)

The class token's row of R_L over the patch tokens (12 x 12) is the map. Unlike attention
rollout (`rollout.py`, the paper's), the map depends on the class asked about and keeps only
attention that raised that class's score.

It needs gradients, so it runs on PyTorch whatever engine gave the probabilities (an OpenVINO
graph has no backward pass): `assess` then says which engine made the map.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .rollout import _as_numpy, capture_attentions, class_token_maps

#: The methods an assessment can draw its map with; "rollout" is the paper's.
EXPLANATIONS = ("rollout", "gradient-rollout")
EXPLANATION_TITLES = {"rollout": "attention rollout",
                      "gradient-rollout": "gradient-weighted attention rollout"}


def check_explanation(explanation: str) -> str:
    if explanation not in EXPLANATIONS:
        raise ValueError(f"The explanation must be one of {', '.join(EXPLANATIONS)}, not {explanation!r}.")
    return explanation


def gradient_rollout(attentions: Sequence, gradients: Sequence) -> np.ndarray:
    """Chefer's relevance from per-block attention probabilities and their gradients.

    attentions, gradients: L arrays or tensors (B, H, N, N), first block first; gradients of
    the target class's logit with respect to each attention.
    Returns R (B, N, N) float64; R[:, 0, prefix:] is the class token's relevance of each patch.
    """
    if len(attentions) == 0 or len(attentions) != len(gradients):
        raise ValueError(f"gradient rollout needs one gradient per attention layer, got "
                         f"{len(attentions)} attentions and {len(gradients)} gradients")
    relevance = None
    for attention, gradient in zip(attentions, gradients):
        attention, gradient = _as_numpy(attention), _as_numpy(gradient)
        if attention.ndim != 4 or attention.shape[2] != attention.shape[3] or gradient.shape != attention.shape:
            raise ValueError(f"expected (B, H, N, N) attention and gradient of one shape, got "
                             f"{attention.shape} and {gradient.shape}")
        # relu after the product: only attention that raised the class's score counts
        weighted = np.maximum(gradient * attention, 0.0).mean(axis=1)
        if relevance is None:
            relevance = np.broadcast_to(np.eye(attention.shape[-1]), weighted.shape).copy()
        relevance = relevance + weighted @ relevance
    return relevance


def logits_and_gradient_rollout_maps(vit, x, target_class: Optional[int | Sequence[int]] = None) -> tuple:
    """One forward and one backward pass of a timm ViT on (B, 2, 192, 192).

    target_class: the class whose logit is explained, one for all images or one per image
    (None: each image's own most probable class).
    Returns logits (B, C) float32 numpy and (B, 12, 12) float64 raw relevance maps (not
    normalised; divide by the max for display).
    """
    import torch

    x = torch.as_tensor(np.asarray(x, np.float32) if not torch.is_tensor(x) else x)
    # an input that asks for gradients makes the graph even for a ViT with frozen weights
    x = x.to(next(vit.parameters()).device).clone().requires_grad_(True)
    with torch.enable_grad(), capture_attentions(vit, keep_graph=True) as attentions:
        logits = vit(x)
        if target_class is None:
            targets = logits.argmax(dim=1)
        else:
            targets = torch.as_tensor(np.broadcast_to(np.asarray(target_class), (logits.shape[0],)).copy(),
                                      device=logits.device)
        if int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]:
            raise ValueError(f"target_class must be a class of the model (0 to {logits.shape[1] - 1})")
        # images do not mix in a ViT, so the sum's gradient is each image's own gradient
        score = logits.gather(1, targets[:, None].long()).sum()
        gradients = torch.autograd.grad(score, list(attentions))
    maps = class_token_maps(vit, gradient_rollout(attentions, gradients))
    return logits.detach().float().cpu().numpy(), maps
