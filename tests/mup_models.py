"""Small models written with ``mup``'s conventions, shared by the muP tests.

The readout class is a parameter so that the same model can be built with
``mup.MuReadout`` or ``tensorprograms.mup.MuReadout``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Input layer, two hidden layers, readout."""

    def __init__(self, width, readout, d_in=6, d_out=3, zero_readout=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width, bias=False)
        self.ln = nn.LayerNorm(width)
        self.out = readout(width, d_out, readout_zero_init=zero_readout)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        h = self.ln(F.relu(self.fc3(h)))
        return self.out(h)


class Block(nn.Module):
    def __init__(self, d, heads, base_d_head):
        super().__init__()
        self.heads = heads
        self.base_d_head = base_d_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        d_head = q.shape[-1]
        # muP attention: logits scaled by 1/d_head, equal to 1/sqrt(d_head) at base
        scale = self.base_d_head**0.5 / d_head
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A two-block causal transformer; ``shared``: a tied readout class."""

    def __init__(self, d, readout, vocab=11, ctx=8, heads=2, base_d=16, shared=None):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        self.blocks = nn.ModuleList(Block(d, heads, base_d // heads) for _ in range(2))
        self.ln = nn.LayerNorm(d)
        if shared is not None:  # tied embedding and readout
            self.head = shared(self.tok.weight, bias=False)
        else:
            self.head = readout(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))
