"""Tests of the PyTorch reference: pytest tools/reference/test_nextflow_ref.py (a few seconds)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nextflow_ref as nf
from config import Config

torch.set_num_threads(1)


def tiny_config(**visual) -> Config:
    """The spec's tiny test model (§5): D=64, 2 layers, 4/2 heads, 4x4 grid, scales 1,2,3,4."""
    cfg = Config()
    cfg.vocabulary.codebook_size = cfg.tokenizer.codebook_size = 64
    b = cfg.backbone
    b.hidden_size, b.num_hidden_layers, b.num_attention_heads, b.num_key_value_heads, b.intermediate_size = 64, 2, 4, 2, 128
    cfg.visual.mrope_section, cfg.visual.rope_scale_c = [2, 3, 3], 4.0
    for key, value in visual.items():
        setattr(cfg.visual, key, value)
    t = cfg.tokenizer
    t.image_size, t.patch_size, t.scales = 32, 8, [[1, 1], [2, 2], [3, 3], [4, 4]]
    t.semantic_dim, t.pixel_dim, t.ch, t.ch_mult, t.teacher_channels, t.z_channels = 4, 4, 8, [1, 2, 2, 4], [8, 16, 16], 8
    cfg.check()
    return cfg


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    cfg = tiny_config()
    return cfg, nf.VisualTokenizer(cfg).eval(), nf.NextFlow(cfg).eval()


def _images(n: int, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ---------------------------------------------------------------------------------------------
# Resampling: the spec's formulas (§1.1) are what F.interpolate computes


def bicubic_by_formula(x: np.ndarray, out: int) -> np.ndarray:
    """Along the last axis: A = -0.75, align_corners=False, unclamped source, clamped taps."""
    a, n = -0.75, x.shape[-1]

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    y = np.zeros(x.shape[:-1] + (out,))
    for o in range(out):
        src = (o + 0.5) * n / out - 0.5
        x0 = math.floor(src)
        t = src - x0
        for tap, weight in zip(range(x0 - 1, x0 + 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            y[..., o] += weight * x[..., min(max(tap, 0), n - 1)]
    return y


def area_by_formula(x: np.ndarray, out: int) -> np.ndarray:
    n = x.shape[-1]
    cells = [x[..., (o * n) // out : -(-((o + 1) * n) // out)].mean(-1) for o in range(out)]
    return np.stack(cells, -1)


@pytest.mark.parametrize("size_in, size_out", [(1, 4), (2, 3), (3, 8), (5, 8), (6, 8), (8, 5), (4, 4)])
def test_interpolation_matches_the_spec_formulas(size_in, size_out):
    x = torch.randn(2, 3, size_in, size_in + 1, dtype=torch.float64)
    out = (size_out, size_out + 2)
    rows = bicubic_by_formula(np.swapaxes(x.numpy(), -1, -2), out[0])
    expected = bicubic_by_formula(np.swapaxes(rows, -1, -2), out[1])
    np.testing.assert_allclose(nf.bicubic(x, out).numpy(), expected, atol=1e-12)
    if size_in >= size_out:
        rows = area_by_formula(np.swapaxes(x.numpy(), -1, -2), out[0])
        expected = area_by_formula(np.swapaxes(rows, -1, -2), min(out[1], size_in + 1))
        np.testing.assert_allclose(nf.area(x, (out[0], min(out[1], size_in + 1))).numpy(), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_shapes(parts):
    cfg, tok, _ = parts
    out = tok(_images(2))
    assert out["image"].shape == (2, 3, 32, 32)
    assert [i.shape for i in out["indices"]] == [(2, h * w) for h, w in cfg.tokenizer.scales]
    assert out["semantic"].shape == out["teacher"].shape == (2, 16, 4, 4)


def test_msrq_decode_of_encode_is_the_loops_f_hat(parts):
    _, tok, _ = parts
    with torch.no_grad():
        indices, f_hat = tok.msrq(tok.features(_images(3)))
    torch.testing.assert_close(tok.decode_codes(indices), f_hat, rtol=0, atol=1e-6)


def test_lookup_is_the_nearest_normalised_pair(parts):
    _, tok, _ = parts
    z = torch.randn(10, 8)
    es, ep = (e.detach() for e in tok.quantize.normalized())
    zs, zp = F.normalize(z[:, :4], dim=-1), F.normalize(z[:, 4:], dim=-1)
    brute = [min(range(64), key=lambda j: float(((zs[i] - es[j]) ** 2).sum() + ((zp[i] - ep[j]) ** 2).sum())) for i in range(10)]
    assert tok.quantize.lookup(z).tolist() == brute
    assert torch.allclose(tok.quantize.embed(torch.tensor(brute)).norm(dim=-1), torch.tensor(math.sqrt(2.0)))


# ---------------------------------------------------------------------------------------------
# Transformer


def test_text_rope_is_one_dimensional():
    cfg = tiny_config()
    t = torch.arange(7, dtype=torch.float32)
    cos, sin = nf.rope_cos_sin(t[None, :, None].expand(1, 7, 3), cfg)
    inv_freq = cfg.backbone.rope_theta ** (-torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    angles = t[:, None] * inv_freq
    torch.testing.assert_close(cos[0, 0], torch.cat([angles, angles], -1).cos())
    torch.testing.assert_close(sin[0, 0], torch.cat([angles, angles], -1).sin())


@pytest.mark.parametrize("axes, pair, coordinate", [("srw", 0, 0), ("srw", 2, 1), ("srw", 5, 2), ("rws", 0, 1), ("rws", 7, 0)])
def test_rope_axis_order(axes, pair, coordinate):
    cfg = tiny_config(rope_axes=axes)  # sections [2,3,3]: pairs 0-1 axis 0, 2-4 axis 1, 5-7 axis 2
    positions = torch.tensor([[[3.0, 0.25, 0.75]]])
    cos, _ = nf.rope_cos_sin(positions, cfg)
    inv_freq = cfg.backbone.rope_theta ** (-2 * pair / 16)
    assert float(cos[0, 0, 0, pair]) == pytest.approx(math.cos(positions[0, 0, coordinate] * inv_freq), abs=1e-6)


def test_map_positions_match_figure_5():
    pos = nf.map_positions(3, 3, 10, 1.0)  # C omitted as in the figure: 3x3 at 1/6, 3/6, 5/6
    assert pos[:, 0].tolist() == [10.0] * 9
    torch.testing.assert_close(pos[:3, 2], torch.tensor([1 / 6, 3 / 6, 5 / 6]))
    torch.testing.assert_close(nf.map_positions(2, 2, 1, 1.0)[:, 1], torch.tensor([0.25, 0.25, 0.75, 0.75]))


def test_scale_weights_keep_the_mean():
    scales = [[1, 1], [2, 2], [3, 3], [4, 4]]
    weights = nf.scale_weights(scales, 0.9)
    assert sum(w * h * h for w, (h, _) in zip(weights, scales)) == pytest.approx(30.0)
    assert weights[0] / weights[1] == pytest.approx(4**0.9)


def _t2i_sequence(cfg, tok, text_ids, generator_seed=0):
    indices = tok.encode(_images(1))
    builder = nf.SequenceBuilder(cfg, tok.quantize)
    builder.text(text_ids)
    builder.image([i[0] for i in indices], generate=True, weights=nf.scale_weights(cfg.tokenizer.scales, 0.9))
    return builder.tensors(), indices


def test_sequence_layout(parts):
    cfg, tok, _ = parts
    seq, indices = _t2i_sequence(cfg, tok, [1, 9, 10])
    assert len(seq["ids"]) == 3 + 1 + 4 + 9 + 16  # text, <boi>, maps 1..3 at grids 2, 3, 4
    assert (seq["weights"] > 0).sum() == 30 and seq["visual"].sum() == 29
    code_start = cfg.vocabulary.code_start
    assert seq["targets"][3] == code_start + indices[0][0, 0]  # <boi> predicts scale 1
    assert seq["targets"][-16:].tolist() == (code_start + indices[3][0]).tolist()
    assert seq["positions"][3].tolist() == [3.0, 3.0, 3.0] and seq["positions"][4, 0] == 4.0
    context = nf.SequenceBuilder(cfg, tok.quantize)
    context.image([i[0] for i in indices], generate=False)
    context.text([cfg.vocabulary.id("what")])
    seq = context.tensors()
    assert len(seq["ids"]) == 1 + 4 + 9 + 16 + 16 + 1 + 1  # maps 1..4, <eoi>, text
    assert seq["positions"][-2].tolist() == [5.0] * 3 and seq["positions"][-1].tolist() == [6.0] * 3


def test_kv_cache_forward_equals_full_recompute(parts):
    cfg, tok, model = parts
    seq, _ = _t2i_sequence(cfg, tok, [1, 9, 10, 11])
    batch = nf.collate([seq])
    full = model(batch)
    cache = nf.KvCache(cfg.backbone.num_hidden_layers)
    bounds = [0, 5, 9, 18, len(seq["ids"])]  # prefix + <boi>, then one input map at a time
    chunks = [model({k: v[:, s:e] for k, v in batch.items()}, cache) for s, e in zip(bounds, bounds[1:])]
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_mode", ["residual", "accumulated"])
def test_generation_with_cache_equals_recompute(input_mode):
    torch.manual_seed(0)
    cfg = tiny_config(input_mode=input_mode)
    tok, model = nf.VisualTokenizer(cfg).eval(), nf.NextFlow(cfg).eval()
    cfg.sampler.top_k, cfg.sampler.top_p, cfg.sampler.cfg_schedule = 0, 0.9, "linear"
    prompts = [[1, 9, 10, 11], [1, 12]]  # different lengths: left padding in the CFG batch
    for seed in range(3):
        cached = nf.generate(model, tok.quantize, prompts, seed=seed)
        recomputed = nf.generate(model, tok.quantize, prompts, seed=seed, use_cache=False)
        assert [i.shape for i in cached] == [(2, h * w) for h, w in cfg.tokenizer.scales]
        assert all(torch.equal(x, y) for x, y in zip(cached, recomputed))
    assert tok.decode(cached).shape == (2, 3, 32, 32)


def test_generation_is_seeded(parts):
    cfg, tok, model = parts
    one = nf.generate(model, tok.quantize, [[1, 9]], seed=5)
    assert all(torch.equal(x, y) for x, y in zip(one, nf.generate(model, tok.quantize, [[1, 9]], seed=5)))


def test_padding_does_not_change_a_row(parts):
    cfg, tok, model = parts
    short, _ = _t2i_sequence(cfg, tok, [1, 9])
    long, _ = _t2i_sequence(cfg, tok, [1, 9, 10, 11, 12, 13])
    alone = model(nf.collate([short]))
    padded = model(nf.collate([short, long]))[:1, -alone.shape[1] :]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)


def test_editing_prefix_with_cache_equals_recompute(parts):
    cfg, tok, model = parts
    source = [i[0] for i in tok.encode(_images(1))]

    def prefix(text):
        builder = nf.SequenceBuilder(cfg, tok.quantize)
        builder.text([1])
        builder.image(source, generate=False)
        builder.text(text)
        return builder

    runs = [nf.generate(model, tok.quantize, [prefix([9, 10])], seed=3, uncond_prompts=[prefix([])], use_cache=c) for c in (True, False)]
    assert all(torch.equal(x, y) for x, y in zip(*runs))
