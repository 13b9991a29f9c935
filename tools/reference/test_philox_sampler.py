"""philox_sampler.py: the numpy port of the Rust sampler (ops/src/sampling.rs)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import nextflow_ref as nf
import philox_sampler as ps
from test_nextflow_ref import tiny_config

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden" / "sampler"


def test_philox_matches_random123_known_answers():
    m = 0xFFFFFFFF
    assert ps.philox4x32_10([0] * 4, [0] * 2) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert ps.philox4x32_10([m] * 4, [m] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    counter, key = [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]
    assert ps.philox4x32_10(counter, key) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_weights_track_exp_and_masked_logits_weigh_nothing():
    for d in [0.0, 1e-6, 0.3, 1.0, 7.25, 20.0, 44.0]:
        w = float(ps.weight(ps.level(np.array([-d], np.float32), np.float32(0.0)))[0])
        assert abs(w / np.exp(-d) - 1) < 1e-6, d
    for l, zero in [(ps.F32_MIN, True), (-41.5, True), (-41.0, False)]:
        assert (ps.weight(ps.level(np.array([l], np.float32), np.float32(3.0)))[0] == 0) == zero
    keys = ps.ordered(np.array([ps.F32_MIN, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, ps.F32_MAX], np.float32))
    assert (np.diff(keys.astype(np.int64)) >= 0).all() and keys[3] == keys[4]


def test_greedy_is_the_first_argmax_and_top_k_1_the_argmax():
    rng = np.random.default_rng(0)
    ties = np.round(rng.normal(0, 2, (64, 50))).astype(np.float32)
    assert (ps.sample(ties, temperature=0.0) == ties.argmax(1)).all()  # argmax: the first of the largest
    x = rng.normal(0, 2, (64, 50)).astype(np.float32)
    assert (ps.sample(x, top_k=1, seed=5) == x.argmax(1)).all()


def reference_probabilities(cond, uncond, t, temperature, top_k, top_p):
    """f64 VAR sampler distribution (Rust reference_probabilities)."""
    l = cond.astype(np.float64) if uncond is None else (1 + t) * cond.astype(np.float64) - t * uncond.astype(np.float64)
    l = l / temperature
    if 0 < top_k < len(l):
        l = np.where(l < np.sort(l)[::-1][top_k - 1], -np.inf, l)
    w = np.exp(l - l.max())
    p = w / w.sum()
    keep = np.ones(len(l), bool)
    if top_p < 1:
        order = np.argsort(w, kind="stable")
        cum = np.cumsum(p[order])
        drop = cum <= 1 - top_p
        drop[-1] = False
        keep[order[drop]] = False
    p = np.where(keep, w, 0)
    return p / p.sum()


@pytest.mark.parametrize("settings", [
    {"top_k": 10, "temperature": 0.9},
    {"cfg_scale": 1.5, "top_k": 25, "top_p": 0.8},
])  # fmt: skip
def test_draws_follow_the_reference_distribution(settings):
    rng = np.random.default_rng(1)
    cond = rng.normal(0, 1.5, 40).astype(np.float32)
    uncond = (0.5 * cond + rng.uniform(-1, 1, 40)).astype(np.float32)
    n = 3000
    ids = ps.sample(np.tile(cond, (n, 1)), np.tile(uncond, (n, 1)), seed=7, scale=2, **settings)
    p = reference_probabilities(cond, uncond, settings.get("cfg_scale", 0.0), settings.get("temperature", 1.0),
                                settings.get("top_k", 0), settings.get("top_p", 1.0))  # fmt: skip
    freq = np.bincount(ids, minlength=40) / n
    assert (freq[p == 0] == 0).all(), "drew an id outside the kept set"
    assert (np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 2e-3).all(), np.c_[freq, p]


def test_seed_scale_and_row_change_the_draws():
    x = np.tile(np.zeros(64, np.float32), (32, 1))
    a = ps.sample(x, seed=1, scale=0)
    assert len(set(a.tolist())) > 10  # rows draw independently
    assert (a != ps.sample(x, seed=2, scale=0)).any() and (a != ps.sample(x, seed=1, scale=1)).any()
    assert (a == ps.sample(x, seed=1, scale=0)).all()


def test_id_range_and_bad_arguments():
    x = np.random.default_rng(2).normal(0, 1, (16, 30)).astype(np.float32)
    ids = ps.sample(x, top_k=5, id_range=(10, 20), seed=3)
    assert ((ids >= 10) & (ids < 20)).all()
    for bad in [{"id_range": (5, 5)}, {"top_p": 0.0}, {"temperature": -1.0}, {"cfg_scale": float("inf")}]:
        with pytest.raises(ValueError):
            ps.sample(x, **bad)


def test_golden_file_reproduces():
    doc = json.loads((GOLDEN / "cases.json").read_text())
    logits = np.frombuffer((GOLDEN / "logits.f32").read_bytes(), dtype="<f4")
    for u in doc["uniforms"]:
        assert float(ps.uniform(u["seed"], u["scale"], u["position"])) == u["uniform"]
    for case in doc["cases"]:
        size = case["rows"] * case["vocab"]
        cond = logits[case["cond_offset"] : case["cond_offset"] + size].reshape(case["rows"], case["vocab"])
        uncond = logits[case["uncond_offset"] : case["uncond_offset"] + size].reshape(cond.shape) if "uncond_offset" in case else None
        ids = ps.sample(cond, uncond, cfg_scale=case["cfg_scale"], temperature=case["temperature"], top_k=case["top_k"],
                        top_p=case["top_p"], id_range=case["id_range"], seed=case["seed"], scale=case["scale"])  # fmt: skip
        assert ids.tolist() == case["ids"], case["name"]


def test_generate_with_the_philox_sampler():
    cfg = tiny_config()
    torch.manual_seed(0)
    model, codebook = nf.NextFlow(cfg).eval(), nf.DualCodebook(cfg.tokenizer)
    prompts = [[1, 7, 8], [1, 9]]
    a = nf.generate(model, codebook, prompts, seed=3, sampling="philox")
    assert [tuple(i.shape) for i in a] == [(2, h * w) for h, w in cfg.tokenizer.scales]
    assert all(torch.equal(x, y) for x, y in zip(a, nf.generate(model, codebook, prompts, seed=3, sampling="philox", use_cache=False)))
    assert any(not torch.equal(x, y) for x, y in zip(a, nf.generate(model, codebook, prompts, seed=4, sampling="philox")))
