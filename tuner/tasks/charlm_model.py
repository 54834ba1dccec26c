"""A minimal pre-norm causal transformer for the ``charlm`` task.

Kept in its own module because ``nn.Module`` subclasses need torch at import time; ``tuner.tasks.charlm``
imports this lazily. Attention is written with plain tensor ops (no fused kernels, no buffers) so the
model also runs under ``torch.func.functional_call`` + ``vmap``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Block(nn.Module):
    """LayerNorm -> causal self-attention -> residual, LayerNorm -> GELU MLP -> residual."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Causal multi-head self-attention over ``x`` (batch, time, width)."""
        *batch, length, width = x.shape
        head = width // self.n_heads
        q, k, v = (
            t.reshape(*batch, length, self.n_heads, head).transpose(-3, -2) for t in self.qkv(x).split(width, -1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(head)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        return self.proj((weights @ v).transpose(-3, -2).reshape(*batch, length, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention then the MLP, each with a residual connection and a pre-norm."""
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` blocks, a final LayerNorm and a linear head."""

    def __init__(self, vocab_size: int, context: int, d_model: int, n_layers: int, n_heads: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        self.blocks = nn.Sequential(*(Block(d_model, n_heads) for _ in range(n_layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., T)`` char indices -> ``(..., T, vocab)`` next-char logits."""
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        return self.head(self.norm(self.blocks(self.token(tokens) + self.position(positions))))
