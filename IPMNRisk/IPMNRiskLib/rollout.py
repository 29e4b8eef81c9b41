"""Attention rollout (Abnar and Zuidema 2020): which patches the class token drew on.

For each layer the attention probabilities are fused over heads (A_l, N x N with the class
token), the residual connection is accounted for (A_l + I, rows renormalised, which equals
0.5 A_l + 0.5 I when rows of A_l sum to 1), and the layers are multiplied:
R = Â_L ... Â_1. The class token's row over the patch tokens is the map.

Two mistakes common in published copies are avoided: rows are renormalised with the sum
kept as a column (keepdim), and attention is read from timm's explicit softmax path, because
the fused `scaled_dot_product_attention` path never materialises the weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

HEAD_FUSIONS = ("mean", "max", "min")


def _as_numpy(attention) -> np.ndarray:
    if hasattr(attention, "detach"):
        attention = attention.detach().float().cpu().numpy()
    return np.asarray(attention, dtype=np.float64)


def _fuse_heads(attention: np.ndarray, head_fusion: str) -> np.ndarray:
    """(B, H, N, N) -> (B, N, N)."""
    if head_fusion == "mean":
        return attention.mean(axis=1)
    if head_fusion == "max":
        return attention.max(axis=1)
    if head_fusion == "min":
        return attention.min(axis=1)
    raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, not {head_fusion!r}")


def _discard_lowest(fused: np.ndarray, discard_ratio: float) -> np.ndarray:
    """Zero the lowest `discard_ratio` of each (N, N) matrix's weights, never the column of
    attention paid to the class token (it carries the classification)."""
    batch, n, _ = fused.shape
    candidates = fused[:, :, 1:].reshape(batch, n * (n - 1))
    count = int(candidates.shape[1] * discard_ratio)
    if count == 0:
        return fused
    # stable: equal weights are discarded in token order, the same on every machine
    lowest = np.argsort(candidates, kind="stable")[:, :count]  # pragma: no mutate (numpy reads "STABLE" as "stable")
    np.put_along_axis(candidates, lowest, 0.0, axis=1)
    out = fused.copy()
    out[:, :, 1:] = candidates.reshape(batch, n, n - 1)
    return out


def attention_rollout(attentions: Sequence, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> np.ndarray:
    """Rollout of per-layer attention probabilities, first layer first.

    attentions: L arrays or tensors (B, H, N, N), rows summing to 1.
    Returns (B, N, N) float64; row n says how much token n's final state draws on each
    input token.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError("discard_ratio must be in [0, 1)")
    if len(attentions) == 0:
        raise ValueError("no attention layers given")
    rollout = None
    for attention in attentions:
        attention = _as_numpy(attention)
        if attention.ndim != 4 or attention.shape[2] != attention.shape[3]:
            raise ValueError(f"expected (B, H, N, N) attention, got {attention.shape}")
        fused = _discard_lowest(_fuse_heads(attention, head_fusion), discard_ratio)
        with_residual = fused + np.eye(attention.shape[3])
        with_residual /= with_residual.sum(axis=-1, keepdims=True)
        rollout = with_residual if rollout is None else with_residual @ rollout
    return rollout


def _attention_modules(model) -> list:
    blocks = getattr(model, "blocks", None)
    modules = [getattr(block, "attn", None) for block in (blocks or [])]
    if not modules or any(m is None or not hasattr(m, "attn_drop") for m in modules):
        raise TypeError("attention rollout needs a timm VisionTransformer (blocks with attn.attn_drop)")
    return modules


@contextmanager
def capture_attentions(model, keep_graph: bool = False) -> Iterator[list]:
    """Collect each block's attention probabilities (B, H, N, N) during forward passes
    (detached, unless keep_graph: then in the autograd graph, for gradients with respect to
    them, `explanations.gradient_rollout`).

    Fused attention is switched off per block for the duration (the explicit path computes
    the same output) and restored afterwards, as are the hooks. The probabilities are read
    at `attn_drop`, i.e. after softmax; run the model in eval mode so dropout is identity.
    """
    modules = _attention_modules(model)
    captured: list = []
    saved = [getattr(module, "fused_attn", False) for module in modules]
    hooks = [module.attn_drop.register_forward_hook(
        lambda _module, _inputs, output: captured.append(output if keep_graph else output.detach()))
        for module in modules]
    try:
        for module in modules:
            module.fused_attn = False
        yield captured
    finally:
        for hook in hooks:
            hook.remove()
        for module, fused in zip(modules, saved):
            module.fused_attn = fused


def logits_and_attentions(model, x) -> tuple:
    """One forward pass without gradients: logits (B, C) and L attentions (B, H, N, N)."""
    import torch

    with torch.no_grad(), capture_attentions(model) as attentions:
        logits = model(x)
    return logits, list(attentions)


def class_token_maps(model, rollout: np.ndarray) -> np.ndarray:
    """(B, N, N) rollout -> (B, rows, cols) class-token row over the patch grid (12 x 12)."""
    rows, cols = model.patch_embed.grid_size
    return rollout[:, 0, model.num_prefix_tokens:].reshape(rollout.shape[0], rows, cols)


def patch_grid_maps(rollout: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """`class_token_maps` without the model (an engine's outputs carry none): the prefix
    tokens (class token, any registers) are the ones before the rows x cols patch tokens."""
    rows, cols = grid
    prefix = rollout.shape[-1] - rows * cols
    if prefix < 1:
        raise ValueError(f"{rollout.shape[-1]} tokens cannot be a class token and a {rows} x {cols} patch grid")
    return rollout[:, 0, prefix:].reshape(rollout.shape[0], rows, cols)


def logits_and_rollout_maps(model, x, head_fusion: str = "mean",
                            discard_ratio: float = 0.0) -> tuple:
    """One forward pass of (B, 2, 192, 192): logits (B, C) tensor and (B, 12, 12) raw rollout
    maps (each row of R sums to 1; divide by the max for display)."""
    logits, attentions = logits_and_attentions(model, x)
    return logits, class_token_maps(model, attention_rollout(attentions, head_fusion, discard_ratio))


# --- the network as inference engines run it ----------------------------------------------------

def fuse_heads_in_graph(attention, head_fusion: str):
    """(B, H, N, N) tensor -> (B, 1, N, N), fused as `_fuse_heads` fuses. Fusing inside the
    network keeps the engine's outputs 12 times smaller (ViT-B/16 over 8 views: 8 MB instead
    of 97 MB to copy out and widen to float64); the rollout of a single head then fuses
    nothing more, so its maths is unchanged."""
    if head_fusion == "mean":
        return attention.mean(dim=1, keepdim=True)
    if head_fusion == "max":
        return attention.amax(dim=1, keepdim=True)
    if head_fusion == "min":
        return attention.amin(dim=1, keepdim=True)
    raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, not {head_fusion!r}")


def with_attentions(vit, head_fusion: str = "mean"):
    """A module whose forward returns (logits, A_1, ..., A_L): the ViT's logits and each
    block's attention probabilities fused over heads (B, 1, N, N).

    The capture (explicit attention path, hooks at attn_drop) happens inside forward, so a
    trace for OpenVINO records the explicit path and the attention tensors as outputs.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, not {head_fusion!r}")
    _attention_modules(vit)  # a clear error now rather than inside a trace
    return _wrapper_class()(vit, head_fusion).eval()


_WRAPPER = None


def _wrapper_class():
    """Defined on first use: this module is imported where torch is not (Slicer's GUI)."""
    global _WRAPPER
    if _WRAPPER is None:
        import torch

        class LogitsAndAttentions(torch.nn.Module):
            def __init__(self, vit, head_fusion: str) -> None:
                super().__init__()
                self.vit, self.head_fusion = vit, head_fusion

            def forward(self, x):
                with capture_attentions(self.vit) as attentions:
                    logits = self.vit(x)
                return (logits, *[fuse_heads_in_graph(a, self.head_fusion) for a in attentions])

        _WRAPPER = LogitsAndAttentions
    return _WRAPPER


def engine_logits_and_rollout_maps(engine, batch: np.ndarray, grid: tuple[int, int],
                                   head_fusion: str = "mean", discard_ratio: float = 0.0) -> tuple:
    """One engine call on (B, 2, 192, 192): logits (B, C) float32 and (B, rows, cols) raw
    rollout maps. `engine` runs `with_attentions(vit, head_fusion)` (outputs: logits, then
    one attention per block)."""
    outputs = engine(batch)
    if len(outputs) < 2:
        raise ValueError("this engine gives logits only; build it from a recipe with attentions "
                         "(ipmn_recipe(card, head_fusion)) to roll attention out")
    logits, attentions = outputs[0], outputs[1:]
    return logits, patch_grid_maps(attention_rollout(attentions, head_fusion, discard_ratio), grid)
