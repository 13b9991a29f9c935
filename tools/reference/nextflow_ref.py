"""Readable PyTorch reference of NextFlow at any size (/work/shared/docs/NEXTFLOW_SPEC.md).

Three parts, named as their checkpoints are:
  VisualTokenizer  dual-codebook MSRQ tokenizer (TokenFlow style): `encoder_vqkd` (the semantic
                   teacher, standing in for SigLIP), `encode_task_layer`, `encoder`, `quant_conv`,
                   `quantize.embedding_{vqkd,vqgan}`, `post_quant_conv`, `decoder`.
  NextFlow         Qwen2 backbone (`model.layers.N.self_attn.q_proj.weight`, ...) with multi-scale
                   3D RoPE, `model.mm_projector`, `model.lvl_embed`, and one untied `lm_head`.
  generate         the next-scale sampler with a KV cache and CFG as a batch of two.
Sequences are built by `SequenceBuilder` and padded on the left by `collate`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import philox_sampler
from config import Config

# ---------------------------------------------------------------------------------------------
# Resampling (spec §1.1: exact PyTorch semantics)


def area(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="area")


def bicubic(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)


# ---------------------------------------------------------------------------------------------
# Tokenizer building blocks (spec §2.5, scaled down)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head attention over all h*w positions."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.norm(x)
        q, k, v = (conv(t).flatten(2) for conv in (self.q, self.k, self.v))  # B C n
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # B n(query) n(key)
        return x + self.proj_out((v @ weights.transpose(1, 2)).view(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """conv_blocks.j: ResBlocks, then a down- or upsample unless it is the last level."""

    def __init__(self, cin: int, cout: int, n_res: int, groups: int, resample: type | None):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(cin if b == 0 else cout, cout, groups) for b in range(n_res))
        if resample is Downsample:
            self.downsample = Downsample(cout)
        elif resample is Upsample:
            self.upsample = Upsample(cout)

    def forward(self, x):
        for block in self.res:
            x = block(x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


def _mid(channels: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList([ResBlock(channels, channels, groups), AttnBlock(channels, groups), ResBlock(channels, channels, groups)])


class Encoder(nn.Module):
    """Pixel branch (spec §2.4): image [B,3,S,S] in [-1,1] -> [B, z_channels, S/p, S/p]."""

    def __init__(self, t):
        super().__init__()
        chans = [t.ch * m for m in t.ch_mult]
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        self.conv_blocks = nn.ModuleList(
            Level(chans[max(j - 1, 0)], c, t.encoder_res_blocks, t.norm_groups, Downsample if j < len(chans) - 1 else None)
            for j, c in enumerate(chans)
        )
        self.mid = _mid(chans[-1], t.norm_groups)
        self.norm_out = _norm(chans[-1], t.norm_groups)
        self.conv_out = nn.Conv2d(chans[-1], t.z_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for layer in [*self.conv_blocks, *self.mid]:
            x = layer(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Pixel decoder (spec §2.5): [B, z_channels, G, G] -> image [B,3,16G,16G], about [-1,1]."""

    def __init__(self, t):
        super().__init__()
        chans = [t.ch * m for m in reversed(t.ch_mult)]
        self.conv_in = nn.Conv2d(t.z_channels, chans[0], 3, padding=1)
        self.mid = _mid(chans[0], t.norm_groups)
        self.conv_blocks = nn.ModuleList(
            Level(chans[max(j - 1, 0)], c, t.decoder_res_blocks, t.norm_groups, Upsample if j < len(chans) - 1 else None)
            for j, c in enumerate(chans)
        )
        self.norm_out = _norm(chans[-1], t.norm_groups)
        self.conv_out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z):
        x = self.conv_in(z)
        for layer in [*self.mid, *self.conv_blocks]:
            x = layer(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class SemanticTeacher(nn.Module):
    """Stands in for SigLIP: a small CNN trained to say which shapes and colours cover each cell
    of the token grid. `features` is the semantic target; `head` is used only to train it."""

    def __init__(self, t, n_labels: int):
        super().__init__()
        layers, cin = [], 3
        for c in t.teacher_channels:  # one stride-2 conv per channel count: S -> S / 2^n
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), _norm(c, t.norm_groups), nn.SiLU()]
            cin = c
        layers += [nn.Conv2d(cin, cin, 3, padding=1)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, n_labels, 1)
        self.channels = cin

    def forward(self, x):
        return self.features(x)


class DualCodebook(nn.Module):
    """Shared-index lookup (spec §2.2): one index selects a semantic and a pixel code."""

    def __init__(self, t):
        super().__init__()
        self.embedding_vqkd = nn.Embedding(t.codebook_size, t.semantic_dim)
        self.embedding_vqgan = nn.Embedding(t.codebook_size, t.pixel_dim)
        self.semantic_dim, self.pixel_weight, self.normalize = t.semantic_dim, t.pixel_weight, t.normalize_codes

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1) if self.normalize else x.float()

    def normalized(self):
        """The rows lookups and decoding use: L2-normalised per branch (TokenFlow) or raw (plain)."""
        return self._norm(self.embedding_vqkd.weight), self._norm(self.embedding_vqgan.weight)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, Ds+Dp] -> idx [N], in f32: argmin |zs^ - es^|^2 + w |zp^ - ep^|^2 (^: normalised
        halves, or raw ones with normalize_codes false)."""
        zs, zp = self._norm(z[:, : self.semantic_dim]), self._norm(z[:, self.semantic_dim :])
        es, ep = self.normalized()

        def sq_dist(a, e):
            return (a * a).sum(1, keepdim=True) + (e * e).sum(1) - 2 * a @ e.t()

        return (sq_dist(zs, es) + self.pixel_weight * sq_dist(zp, ep)).argmin(1)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """idx [...] -> [..., Ds+Dp]: the normalized [semantic | pixel] code (get_codebook_entry)."""
        es, ep = self.normalized()
        return torch.cat([es[idx], ep[idx]], dim=-1)


class VisualTokenizer(nn.Module):
    def __init__(self, cfg: Config, n_teacher_labels: int = 15):
        super().__init__()
        t = self.t = cfg.tokenizer
        self.encoder_vqkd = SemanticTeacher(t, n_teacher_labels)
        ct = self.encoder_vqkd.channels
        self.encode_task_layer = nn.Sequential(nn.Linear(ct, ct), nn.Tanh(), nn.Linear(ct, t.semantic_dim))
        self.decode_task_layer = nn.Sequential(nn.Linear(t.semantic_dim, ct), nn.Tanh(), nn.Linear(ct, ct))
        self.encoder = Encoder(t)
        self.quant_conv = nn.Conv2d(t.z_channels, t.pixel_dim, 1)
        self.quantize = DualCodebook(t)
        self.post_quant_conv = nn.Conv2d(t.pixel_dim, t.z_channels, 1)
        self.decoder = Decoder(t)

    @staticmethod
    def _per_cell(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,S,S] in [-1,1] -> f [B, Ds+Dp, G, G] = [semantic | pixel]."""
        with torch.no_grad():
            teacher = self.encoder_vqkd(image)
        semantic = self._per_cell(self.encode_task_layer, teacher)
        return torch.cat([semantic, self.quant_conv(self.encoder(image))], dim=1)

    def canvas_schedule(self, grid) -> list:
        """Scales of the canvas whose token grid is `grid` (h, w)."""
        return self.t.schedule(grid[0] * self.t.patch_size, grid[1] * self.t.patch_size)

    def msrq(self, f: torch.Tensor, residuals: list | None = None, scales: list | None = None) -> tuple:
        """Multi-scale residual quantization (spec §1.3) in f32: (indices per scale [B, h*w], f_hat).
        Gradients reach the codebook through f_hat, not the encoder (VAR's quantizer).
        `residuals`, if given, receives each scale's quantizer input [B*h*w, C]. `scales`
        defaults to the schedule of f's canvas (config `schedules`; the native one for a square)."""
        f_rest, f_hat, indices = f.detach().float(), 0.0, []
        batch, channels, grid = f.shape[0], f.shape[1], f.shape[-2:]
        scales = scales or self.canvas_schedule(grid)
        with torch.autocast("cpu", enabled=False):
            for h, w in scales:
                z = area(f_rest, (h, w))
                z = z.permute(0, 2, 3, 1).reshape(-1, channels)
                if residuals is not None:
                    residuals.append(z)
                idx = self.quantize.lookup(z).view(batch, h * w)
                up = bicubic(self.quantize.embed(idx).view(batch, h, w, channels).permute(0, 3, 1, 2), grid)
                f_hat, f_rest = f_hat + up, f_rest - up.detach()
                indices.append(idx)
        return indices, f_hat

    def decode_codes(self, indices: list, scales: list | None = None) -> torch.Tensor:
        """f_hat = sum_k bicubic(code(idx_k), grid), from indices alone; grid = the last scale of
        `scales` (default: the native schedule)."""
        scales = scales or self.t.scales
        grid = scales[-1]
        f_hat = 0.0
        for (h, w), idx in zip(scales, indices):
            codes = self.quantize.embed(idx).view(idx.shape[0], h, w, -1).permute(0, 3, 1, 2)
            f_hat = f_hat + bicubic(codes, grid)
        return f_hat

    def pixels(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decoder on the pixel part of f_hat only (spec §2.3)."""
        return self.decoder(self.post_quant_conv(f_hat[:, self.t.semantic_dim :]))

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> list:
        """Per-scale indices of the image's canvas schedule."""
        return self.msrq(self.features(image))[0]

    @torch.no_grad()
    def decode(self, indices: list, scales: list | None = None) -> torch.Tensor:
        return self.pixels(self.decode_codes(indices, scales).to(self.post_quant_conv.weight.dtype)).clamp(-1, 1)

    def forward(self, image: torch.Tensor, beta: float = 0.25, corrupt=None) -> dict:
        """Training pass: reconstruction, semantic prediction vs teacher, VQ loss. `corrupt`, if
        given, maps the per-scale indices to the ones the decoder sees (robustness to the
        transformer's mistakes); the VQ loss still uses the true ones."""
        f = self.features(image)
        residuals = []
        indices, f_hat = self.msrq(f, residuals)
        vq_loss = beta * F.mse_loss(f.float(), f_hat.detach()) + F.mse_loss(f_hat, f.detach().float())
        if corrupt is not None:
            scales = self.canvas_schedule(f.shape[-2:])
            f_hat = self.decode_codes(corrupt(indices), scales).to(f_hat.dtype)
        f_q = f + (f_hat - f).detach()  # straight through
        with torch.no_grad():
            teacher = self.encoder_vqkd(image)
        semantic = self._per_cell(self.decode_task_layer, f_q[:, : self.t.semantic_dim])
        return {"image": self.pixels(f_q), "semantic": semantic, "teacher": teacher, "vq_loss": vq_loss,
                "indices": indices, "residuals": torch.cat(residuals)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Transformer (Qwen2 backbone, spec §4.1-4.2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, cfg: Config) -> tuple:
    """Multi-scale 3D RoPE (spec §4.2): positions [B,T,3] f32 as (p_s, p_row, p_col) -> cos, sin
    [B,1,T,head_dim]. Frequency pair k rotates by the coordinate of its mrope section's axis."""
    head_dim = cfg.backbone.head_dim
    inv_freq = cfg.backbone.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    axis_coordinate = {"srw": [0, 1, 2], "rws": [1, 2, 0]}[cfg.visual.rope_axes]
    pair_axis = torch.repeat_interleave(torch.tensor(axis_coordinate), torch.tensor(cfg.visual.mrope_section))
    angles = positions.float()[..., pair_axis] * inv_freq  # B T head_dim/2
    emb = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class KvCache:
    """Per layer keys and values [B, kv_heads, S, head_dim], plus what the mask needs of each key."""

    def __init__(self, n_layers: int):
        self.k, self.v = [None] * n_layers, [None] * n_layers
        self.valid = self.blocks = None

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def append(self, layer: int, k, v) -> tuple:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


def attention_mask(valid, blocks, key_valid, key_blocks, start: int) -> torch.Tensor:
    """[B,1,T,S] bool. Query i (absolute index start+i) sees key j if j is not padding and j <= i
    (causal) or both are in the same input map (bidirectional inside a scale); always itself."""
    q_abs = start + torch.arange(valid.shape[1])
    k_abs = torch.arange(key_valid.shape[1])
    causal = k_abs[None, None, :] <= q_abs[None, :, None]
    same_map = (key_blocks[:, None, :] == blocks[:, :, None]) & (blocks[:, :, None] >= 0)
    itself = k_abs[None, None, :] == q_abs[None, :, None]
    return ((causal | same_map) & key_valid[:, None, :] | itself).unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        b = cfg.backbone
        self.heads, self.kv_heads, self.head_dim = b.num_attention_heads, b.num_key_value_heads, b.head_dim
        self.q_proj = nn.Linear(b.hidden_size, self.heads * self.head_dim, bias=b.attention_bias)
        self.k_proj = nn.Linear(b.hidden_size, self.kv_heads * self.head_dim, bias=b.attention_bias)
        self.v_proj = nn.Linear(b.hidden_size, self.kv_heads * self.head_dim, bias=b.attention_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, b.hidden_size, bias=False)
        if b.qk_norm:
            self.qknorm = nn.Module()
            self.qknorm.query_norm = RMSNorm(self.head_dim, b.rms_norm_eps)
            self.qknorm.key_norm = RMSNorm(self.head_dim, b.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache: KvCache | None, layer: int):
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "qknorm"):
            q, k = self.qknorm.query_norm(q), self.qknorm.key_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d, i = cfg.backbone.hidden_size, cfg.backbone.intermediate_size
        self.gate_proj, self.up_proj = nn.Linear(d, i, bias=False), nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d, eps = cfg.backbone.hidden_size, cfg.backbone.rms_norm_eps
        self.self_attn, self.mlp = Attention(cfg), MLP(cfg)
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(d, eps), RMSNorm(d, eps)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


def scale_length_embedding(n_scales: int, dim: int) -> torch.Tensor:
    """Transformer sinusoid of the schedule length K: PE[2i] = sin(K / 10000^(2i/D)), PE[2i+1] = cos."""
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    pe = torch.zeros(dim)
    pe[0::2], pe[1::2] = torch.sin(n_scales * freq), torch.cos(n_scales * freq)
    return pe


class Qwen2Model(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        b, d = cfg.backbone, cfg.backbone.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocabulary.size, d)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(b.num_hidden_layers))
        self.norm = RMSNorm(d, b.rms_norm_eps)
        self.mm_projector = nn.Sequential(nn.Linear(cfg.tokenizer.code_dim, d), nn.GELU(), nn.Linear(d, d))
        self.lvl_embed = nn.Embedding(cfg.tokenizer.max_scales + 1, d)


class NextFlow(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.backbone.hidden_size, cfg.vocabulary.size, bias=False)
        # Row K: the sinusoid of a schedule of K scales (row 0 unused: text has none).
        pe = torch.stack([scale_length_embedding(k, cfg.backbone.hidden_size) for k in range(cfg.tokenizer.max_scales + 1)])
        self.register_buffer("scale_length_pe", pe * float(cfg.visual.scale_length_embedding), persistent=False)

    def embed(self, batch: dict) -> torch.Tensor:
        """Text ids through embed_tokens; input-map cells through adapter + level + K embeddings."""
        x = self.model.embed_tokens(batch["ids"])
        visual = batch["visual"]
        if visual.any():
            cells = self.model.mm_projector(batch["features"][visual].to(x.dtype))
            cells = cells + self.model.lvl_embed(batch["levels"][visual]) + self.scale_length_pe[batch["n_scales"][visual]]
            x = x.masked_scatter(visual.unsqueeze(-1), cells.to(x.dtype))
        return x

    def forward(self, batch: dict, cache: KvCache | None = None) -> torch.Tensor:
        """Hidden states [B,T,D] after the final norm. With a cache, batch continues its sequences."""
        start = cache.length if cache is not None else 0
        key_valid, key_blocks = batch["valid"], batch["blocks"]
        if cache is not None and cache.valid is not None:
            key_valid, key_blocks = torch.cat([cache.valid, key_valid], 1), torch.cat([cache.blocks, key_blocks], 1)
        mask = attention_mask(batch["valid"], batch["blocks"], key_valid, key_blocks, start)
        if cache is not None:
            cache.valid, cache.blocks = key_valid, key_blocks
        cos, sin = rope_cos_sin(batch["positions"], self.cfg)
        x = self.embed(batch)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        return self.model.norm(x)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the visual-code rows of lm_head only, in f32."""
        return (hidden @ self.lm_head.weight[self.cfg.vocabulary.code_start :].t()).float()


# ---------------------------------------------------------------------------------------------
# Sequences: text and images as one stream of rows (spec §4.2-4.5)


def next_scale_input(codes: torch.Tensor, accumulated, size, mode: str) -> tuple:
    """Input map for the next scale from scale k's codes [B,Dc,h,w] (spec §4.3): (map, state)."""
    if mode == "residual":
        return bicubic(codes, size), None
    f = codes if accumulated is None else accumulated + codes
    f = bicubic(f, size)
    return f, f


def map_positions(h: int, w: int, p_s: float, c: float) -> torch.Tensor:
    """[h*w, 3] (p_s, p_row, p_col) with p_row = C / sqrt(h w) * (i + 0.5), row-major."""
    step = c / math.sqrt(h * w)
    rows = (torch.arange(h, dtype=torch.float32) + 0.5) * step
    cols = (torch.arange(w, dtype=torch.float32) + 0.5) * step
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).view(-1, 2)
    return torch.cat([torch.full((h * w, 1), float(p_s)), grid], dim=1)


def scale_weights(scales: list, alpha: float) -> list:
    """Per-token loss weight of each scale (spec §4.4): k_s = (h w)^-alpha, renormalized so that
    the mean weight over an image's tokens is 1."""
    sizes = [h * w for h, w in scales]
    k = [n ** -alpha for n in sizes]
    norm = sum(sizes) / sum(n * ks for n, ks in zip(sizes, k))
    return [ks * norm for ks in k]


class SequenceBuilder:
    """One sequence as rows: token id or input-map cell, 3D position, map id, training target.

    Positions: text t -> (t,t,t); <boi> at p; input map m (m = 1..) at p_s = p + m with spatial
    coordinates from its grid; <eoi> one past the last map; text continues from there.
    """

    def __init__(self, cfg: Config, codebook: DualCodebook):
        self.cfg, self.codebook, self.vocab = cfg, codebook, cfg.vocabulary
        self.rows = {k: [] for k in ("ids", "visual", "features", "levels", "n_scales", "positions", "blocks", "targets", "weights")}
        self.position, self.n_maps = 0, 0

    def _add(self, n, ids, positions, features=None, level=0, block=-1, n_scales=0):
        zeros = torch.zeros(n, self.cfg.tokenizer.code_dim)
        r = self.rows
        r["ids"].append(torch.as_tensor(ids, dtype=torch.long).expand(n))
        r["visual"].append(torch.full((n,), features is not None))
        r["features"].append(zeros if features is None else features)
        r["levels"].append(torch.full((n,), level))
        r["n_scales"].append(torch.full((n,), n_scales))
        r["positions"].append(positions)
        r["blocks"].append(torch.full((n,), block))
        r["targets"].append(torch.full((n,), -100))
        r["weights"].append(torch.zeros(n))

    def _set_targets(self, targets, weight: float):
        """Targets of the last rows added."""
        n = len(targets)
        self.rows["targets"][-1][-n:] = torch.as_tensor(targets)
        self.rows["weights"][-1][-n:] = weight

    def text(self, ids: list, loss: bool = False):
        for token in ids:
            if loss and self.rows["ids"]:
                self.rows["targets"][-1][-1] = token  # the row before predicts this token
                self.rows["weights"][-1][-1] = 1.0
            self._add(1, token, torch.full((1, 3), float(self.position)))
            self.position += 1

    def image(self, indices: list, generate: bool, weights: list | None = None, scales: list | None = None):
        """Scales' indices [h*w] (k = 1..K). generate: teacher-forced targets, maps 1..K-1 as
        in generation. Otherwise a context image: maps 1..K (spec §4.5 open question) and <eoi>.
        `scales`: the image's schedule (default: the native one)."""
        v, t = self.cfg.visual, self.cfg.tokenizer
        scales, code_start = scales or t.scales, self.vocab.code_start
        assert tuple(scales[0]) == (1, 1), "<boi> predicts the first scale alone"
        boi = self.position
        self.text([self.vocab.id("<boi>")])
        if generate:
            self._set_targets([code_start + int(indices[0][0])], weights[0])
        n_maps = len(scales) - 1 if generate or not v.context_last_scale else len(scales)
        state = None
        for k in range(1, n_maps + 1):  # map k is made from the codes of scale k
            (h, w), size = scales[k - 1], scales[min(k, len(scales) - 1)]
            codes = self.codebook.embed(indices[k - 1]).view(1, h, w, -1).permute(0, 3, 1, 2)
            x, state = next_scale_input(codes, state, size, v.input_mode)
            level = k - 1 if v.level_embedding == "source_scale" else k
            cells = x[0].flatten(1).t()
            self._add(len(cells), self.vocab.id("<pad>"), map_positions(*size, boi + k, v.rope_scale_c), cells, level, self.n_maps, len(scales))
            self.n_maps += 1
            if generate:
                self._set_targets(code_start + indices[k], weights[k])
        self.position = boi + n_maps + 1
        if not generate:
            self.text([self.vocab.id("<eoi>")])

    def tensors(self) -> dict:
        return {k: torch.cat(v) for k, v in self.rows.items()}


def collate(sequences: list, pad_id: int = 0) -> dict:
    """Left-pad sequences to one length; padding rows are invalid keys."""
    length = max(len(s["ids"]) for s in sequences)
    out = {}
    for key in sequences[0]:
        rows = []
        for s in sequences:
            pad = length - len(s[key])
            fill = {"ids": pad_id, "targets": -100, "blocks": -1}.get(key, 0)
            rows.append(torch.cat([torch.full((pad, *s[key].shape[1:]), fill, dtype=s[key].dtype), s[key]]))
        out[key] = torch.stack(rows)
    out["valid"] = torch.stack([torch.arange(length) >= length - len(s["ids"]) for s in sequences])
    return out


# ---------------------------------------------------------------------------------------------
# Next-scale sampler (spec §4.5)


def sample_top_k_top_p(logits, top_k: int, top_p: float, temperature: float, generator) -> torch.Tensor:
    """logits [B,n,V] -> [B,n]: one independent draw per position (VAR's helper)."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[..., -1] = False  # keep the largest
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -math.inf)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])


@torch.no_grad()
def generate(model: NextFlow, codebook: DualCodebook, prompts: list, sampler=None, seed: int = 0,
             uncond_prompts: list | None = None, use_cache: bool = True, sampling: str = "torch", scales: list | None = None) -> list:  # fmt: skip
    """Prompts -> per scale [B, h*w] code indices. A prompt is its token ids before <boi>, or a
    SequenceBuilder holding a prefix with images (editing). CFG runs the unconditional prompts
    (default: <bos> alone) as the second half of the batch.
    sampling "torch": VAR's top-k/top-p and torch.multinomial; "philox": the Rust engine's
    sampler (philox_sampler.py, bit-exact with its CPU path): CFG as (1+t) l_c - t l_u with
    t = w - 1, Philox counter (row-major row of the scale's [B, h*w] logits, scale index k)."""
    cfg, sampler = model.cfg, sampler or model.cfg.sampler
    scales, mode = scales or cfg.tokenizer.scales, cfg.visual.input_mode
    guided = sampler.cfg_scale != 1.0
    rows = list(prompts) + (list(uncond_prompts or [[cfg.vocabulary.id("<bos>")]] * len(prompts)) if guided else [])
    builders = []
    for prompt in rows:
        builder = prompt if isinstance(prompt, SequenceBuilder) else SequenceBuilder(cfg, codebook)
        builder.text(([] if isinstance(prompt, SequenceBuilder) else list(prompt)) + [cfg.vocabulary.id("<boi>")])
        builders.append(builder)
    steps = [collate([b.tensors() for b in builders])]
    boi = torch.tensor([b.position - 1 for b in builders])
    cache = KvCache(len(model.model.layers)) if use_cache else None
    generator = torch.Generator().manual_seed(seed)
    hidden = model(steps[0], cache)[:, -1:]  # <boi> predicts the 1x1 scale
    indices, state, n = [], None, len(prompts)
    for k, (h, w) in enumerate(scales):
        logits = model.code_logits(hidden)
        ramp = k / max(len(scales) - 1, 1) if sampler.cfg_schedule == "linear" else 1.0
        weight = 1.0 + (sampler.cfg_scale - 1.0) * ramp
        if sampling == "philox":
            uncond = logits[n:].numpy() if guided else None
            idx = torch.from_numpy(philox_sampler.sample(logits[:n].numpy(), uncond, cfg_scale=weight - 1.0, temperature=sampler.temperature,
                                                         top_k=sampler.top_k, top_p=sampler.top_p, seed=seed, scale=k))  # fmt: skip
        else:
            if guided:
                logits = logits[n:] + weight * (logits[:n] - logits[n:])
            idx = sample_top_k_top_p(logits, sampler.top_k, sampler.top_p, sampler.temperature, generator)
        indices.append(idx)
        if k == len(scales) - 1:
            break
        codes = codebook.embed(idx).view(n, h, w, -1).permute(0, 3, 1, 2)
        x, state = next_scale_input(torch.cat([codes] * (len(rows) // n)), state, scales[k + 1], mode)
        steps.append(map_batch(cfg, x, k + 1, boi + k + 1, block=max(b.n_maps for b in builders) + k, n_scales=len(scales)))
        batch = steps[-1] if use_cache else {key: torch.cat([s[key] for s in steps], 1) for key in steps[-1]}
        hidden = model(batch, cache)[:, -x.shape[-2] * x.shape[-1] :]
    return indices


def map_batch(cfg: Config, x: torch.Tensor, source_scale: int, p_s: torch.Tensor, block: int, n_scales: int) -> dict:
    """Rows of input map `source_scale` for a batch: x [B,Dc,h,w], p_s [B] (one counter per row)."""
    batch, _, h, w = x.shape
    level = source_scale - 1 if cfg.visual.level_embedding == "source_scale" else source_scale
    positions = torch.stack([map_positions(h, w, float(p), cfg.visual.rope_scale_c) for p in p_s])
    n = h * w
    return {"ids": torch.full((batch, n), cfg.vocabulary.id("<pad>")), "visual": torch.ones(batch, n, dtype=torch.bool),
            "features": x.flatten(2).transpose(1, 2), "levels": torch.full((batch, n), level),
            "n_scales": torch.full((batch, n), n_scales), "positions": positions,
            "blocks": torch.full((batch, n), block), "valid": torch.ones(batch, n, dtype=torch.bool)}  # fmt: skip
