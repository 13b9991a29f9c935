"""The Rust engine's counter-based sampler in numpy, bit-exact with its CPU path
(ops/src/sampling.rs: `sample_cpu`, `sample_row`, `philox4x32_10`, `uniform`, `weight_table`).

Every step is the Rust one with the same f32 operations in the same order (f64 where Rust uses
f64): CFG combine `l = clamp(a_c·cond) − clamp(a_u·uncond)` with `a_c = (1+t)/T`, `a_u = t/T`
rounded once to f32; top-k on order-preserving u32 keys (ties at the k-th all stay); weights
`2^(−e/2^20)` from a table for the level `e` below the row max; top-p as a largest level `φ`
found by bisection on fixed-order sums; a draw with the Philox4x32-10 uniform of the counter
(row, scale, 0, 0) under the key (seed lo, seed hi), located unit by unit (a unit owns the
offsets j ≡ t mod block). The CFG scale is Rust's: `t = w − 1` for nextflow_ref's weight `w`.

  python tools/reference/make_golden.py sampler   # tests/golden/sampler/ (write_golden below)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
LEVEL_BITS = 20
LEVEL_MAX = 64 << LEVEL_BITS
GROUP = 16  # the kernel's cube sum: groups of 16 units, then the group sums
F32_MIN, F32_MAX = np.float32(np.finfo(np.float32).min), np.float32(np.finfo(np.float32).max)
LOG2_E = np.float32(1.4426950408889634)  # std::f32::consts::LOG2_E
F32 = np.float32


def weight_table() -> np.ndarray:
    """[hi (1024), lo (1024), pow (65)]: 2^(−j/1024), 2^(−j/2^20), 2^−j (0 at j = 64), each
    computed in f64 and rounded once to f32."""
    hi = [2.0 ** (-j / 1024.0) for j in range(1024)]
    lo = [2.0 ** (-j / 1048576.0) for j in range(1024)]
    pow_ = [2.0 ** -j if j < 64 else 0.0 for j in range(65)]
    return np.array(hi + lo + pow_, dtype=np.float64).astype(np.float32)


TABLE = weight_table()


def philox4x32_10(counter, key) -> list:
    """Philox4x32-10 (Random123's philox4x32) on Python ints."""
    x0, x1, x2, x3 = (int(c) & MASK32 for c in counter)
    k0, k1 = (int(k) & MASK32 for k in key)
    for _ in range(10):
        p0, p1 = PHILOX_M0 * x0, PHILOX_M1 * x2
        hi0, lo0, hi1, lo1 = p0 >> 32, p0 & MASK32, p1 >> 32, p1 & MASK32
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return [x0, x1, x2, x3]


def uniform(seed: int, scale: int, position: int) -> np.float32:
    """The 24-bit uniform in [0, 1) that row `position` of `scale` draws with under `seed`."""
    bits = philox4x32_10([position, scale, 0, 0], [seed & MASK32, (seed >> 32) & MASK32])[0]
    return F32(bits >> 8) * F32(1.0 / 16777216.0)


def clamp(x: np.ndarray) -> np.ndarray:
    """min(max(x, f32::MIN), f32::MAX); NaN goes to MIN as Rust's f32::max does."""
    return np.fmin(np.fmax(x, F32_MIN), F32_MAX)


def ordered(l: np.ndarray) -> np.ndarray:
    """u32 keys in the order of the f32 values (−0 as +0)."""
    b = l.astype(np.float32).view(np.uint32)
    return np.where(b == 0x80000000, np.uint32(0x80000000), np.where(b >= 0x80000000, ~b, b | np.uint32(0x80000000)))


def level(l: np.ndarray, m: np.float32) -> np.ndarray:
    """ceil(min(m − l, 64)·log2(e)·2^20) as u32, at most LEVEL_MAX (f32 throughout)."""
    with np.errstate(over="ignore"):  # m − l overflows to inf for l = f32::MIN (masked): min() makes it 64
        x = np.ceil(np.minimum(F32(m) - l, F32(64.0)) * LOG2_E * F32(1048576.0))
    return np.minimum(x.astype(np.float64), LEVEL_MAX).astype(np.uint32)


def weight(e: np.ndarray) -> np.ndarray:
    return TABLE[(e >> 10) & 1023] * TABLE[1024 + (e & 1023)] * TABLE[2048 + (e >> 20)]


def cube_sum(parts: np.ndarray) -> np.float32:
    total = F32(0.0)
    for g in range(0, len(parts), GROUP):
        acc = F32(0.0)
        for p in parts[g : g + GROUP]:
            acc = F32(acc + p)
        total = F32(total + acc)
    return total


def unit_sums(w: np.ndarray, block: int, keep: np.ndarray) -> np.ndarray:
    """Per unit t, the sequential f32 sum of w[j] over j ≡ t (mod block) with keep[j]."""
    kept = np.where(keep, w, F32(0.0)).astype(np.float32)  # + 0.0 leaves a sum of w >= 0 as it is
    rows = -(-len(kept) // block)
    padded = np.zeros(rows * block, dtype=np.float32)
    padded[: len(kept)] = kept
    acc = np.zeros(block, dtype=np.float32)
    for row in padded.reshape(rows, block):
        acc = acc + row
    return acc


def block_for(n: int) -> int:
    """Units per row: about 16 logits per unit, 16..=256, a power of two."""
    p = 1
    while p < n // 16:
        p *= 2
    return min(max(p, 16), 256)


class Plan:
    """SamplerConfig resolved as Rust's `plan` does (validation included)."""

    def __init__(self, vocab: int, has_uncond: bool, cfg_scale=0.0, temperature=1.0, top_k=0, top_p=1.0,
                 id_range=None, seed=0, scale=0):  # fmt: skip
        cfg_scale, temperature, top_p = F32(cfg_scale), F32(temperature), F32(top_p)
        start, end = id_range if id_range is not None else (0, vocab)
        if not (0 <= start < end <= vocab):
            raise ValueError(f"id range {start}..{end} is empty or outside the vocabulary of {vocab}")
        if not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if not (0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.greedy = temperature == 0
        divisor = 1.0 if self.greedy else float(temperature)
        t = float(cfg_scale)
        self.coef_cond, self.coef_uncond = F32((1.0 + t) / divisor), F32(t / divisor)
        if not (math.isfinite(self.coef_cond) and math.isfinite(self.coef_uncond)):
            raise ValueError(f"cfg_scale {cfg_scale} / temperature {temperature} overflows f32")
        self.start, self.len = start, end - start
        self.block = block_for(self.len)
        self.has_uncond = has_uncond and self.coef_uncond != 0  # t = 0: uncond is not read
        self.top_k = int(top_k) if int(top_k) < self.len else 0
        self.one_minus_p = F32(F32(1.0) - top_p) if top_p < 1 else None
        self.seed, self.scale = int(seed), int(scale)


def sample_row(cond: np.ndarray, uncond: np.ndarray | None, plan: Plan, position: int) -> int:
    """One row's in-range logits -> the offset drawn (Rust `sample_row`)."""
    with np.errstate(over="ignore", invalid="ignore"):
        pc = clamp(cond * plan.coef_cond)
        l = pc if uncond is None else np.where(pc > F32_MIN, clamp(pc - clamp(uncond * plan.coef_uncond)), pc)
    l = l.astype(np.float32)
    if plan.greedy:
        return int(np.argmax(l))  # the first index of the largest
    m = F32(l.max())
    ord_ = ordered(l)
    theta = np.sort(ord_)[::-1][plan.top_k - 1] if plan.top_k > 0 else np.uint32(0)
    e = level(l, m)
    w = weight(e)
    block, in_top_k = plan.block, ord_ >= theta
    if plan.one_minus_p is None:
        phi = LEVEL_MAX
    else:
        threshold = F32(plan.one_minus_p * cube_sum(unit_sums(w, block, in_top_k)))
        lo, hi = 0, LEVEL_MAX + 1
        while hi - lo > 1:
            mid = lo + (hi - lo) // 2
            if cube_sum(unit_sums(w, block, in_top_k & (e >= mid))) > threshold:
                lo = mid
            else:
                hi = mid
        phi = lo
    kept = in_top_k & (e <= phi)
    sums = unit_sums(w, block, kept)
    prefix = np.zeros(block + 1, dtype=np.float32)
    for t in range(block):
        prefix[t + 1] = F32(prefix[t] + sums[t])
    nonzero = np.nonzero(sums > 0)[0]
    last_unit = int(nonzero[-1]) if len(nonzero) else 0
    total = prefix[block]
    target = F32(min(F32(uniform(plan.seed, plan.scale, position) * total), F32_MAX))
    inside = next((t for t in range(block) if prefix[t] <= target < prefix[t + 1]), None)
    unit = last_unit if inside is None else inside
    local = F32(target - prefix[unit])
    run, last = F32(0.0), None
    for j in range(unit, len(l), block):
        if not kept[j]:
            continue
        run = F32(run + w[j])
        if w[j] > 0:
            last = j
        if inside is not None and run > local:
            return j
    assert last is not None, "the drawing unit holds kept mass"
    return last


def sample(cond, uncond=None, *, cfg_scale=0.0, temperature=1.0, top_k=0, top_p=1.0, id_range=None,
           seed=0, scale=0) -> np.ndarray:  # fmt: skip
    """Rust `sample` on the CPU: one id (absolute in the vocabulary) per row of [..., vocab]
    f32 logits; row r (row-major) draws with the Philox counter (r, scale) under `seed`."""
    cond = np.ascontiguousarray(cond, dtype=np.float32)
    vocab = cond.shape[-1]
    rows = cond.reshape(-1, vocab)
    if uncond is not None:
        uncond = np.ascontiguousarray(uncond, dtype=np.float32)
        assert uncond.shape == cond.shape, (uncond.shape, cond.shape)
    plan = Plan(vocab, uncond is not None, cfg_scale, temperature, top_k, top_p, id_range, seed, scale)
    urows = uncond.reshape(-1, vocab) if uncond is not None and plan.has_uncond else None
    s, n = plan.start, plan.len
    ids = [s + sample_row(rows[r, s : s + n], None if urows is None else urows[r, s : s + n], plan, r) for r in range(len(rows))]
    return np.array(ids, dtype=np.int64).reshape(cond.shape[:-1])


# ---------------------------------------------------------------------------------------------
# Golden file for the Rust test (tests/sampler_golden.rs)


def _cases(rng: np.random.Generator) -> list:
    """(name, cond, uncond or None, settings): a few hundred rows over every feature."""

    def peaked(rows, vocab, mask_every=0):
        x = (rng.uniform(-3, 3, (rows, vocab)) ** 3 / 3).astype(np.float32)
        if mask_every:
            x[:, 5::mask_every] = -np.inf
        return x

    def uncond_of(cond):
        u = (0.7 * cond.astype(np.float64) + rng.uniform(-1, 1, cond.shape)).astype(np.float32)
        return np.where(np.isneginf(cond), np.float32(-np.inf), u)

    ties = (np.round(rng.uniform(-3, 3, (32, 97)) * 2) / 2).astype(np.float32)
    plain = peaked(48, 97)
    masked = peaked(32, 97, mask_every=7)
    codes = peaked(16, 575)  # the nextflow-tiny vocabulary; codes are ids 63..575
    codes_u = uncond_of(codes)
    narrow = rng.normal(0, 0.3, (32, 97)).astype(np.float32)  # flat: top-p keeps many
    big = (rng.normal(0, 1, (8, 2100)) * 4).astype(np.float32)  # block 128: 8 groups of units
    cases = [
        ("plain", plain, None, {}),
        ("top-k 5", plain, None, {"top_k": 5}),
        ("top-k 1", plain, None, {"top_k": 1}),
        ("top-p 0.8", plain, None, {"top_p": 0.8}),
        ("top-p 0.3, flat", narrow, None, {"top_p": 0.3}),
        ("T 0.7, top-k 20", plain, None, {"temperature": 0.7, "top_k": 20}),
        ("T 1.6, top-p 0.95", narrow, None, {"temperature": 1.6, "top_p": 0.95}),
        ("greedy", plain, None, {"temperature": 0.0}),
        ("masked -inf, top-k 30 top-p 0.9", masked, None, {"top_k": 30, "top_p": 0.9}),
        ("masked -inf, cfg 2 + uncond", masked, uncond_of(masked), {"cfg_scale": 2.0}),
        ("ties, top-k 10 top-p 0.9", ties, None, {"top_k": 10, "top_p": 0.9}),
        ("ties, greedy", ties, None, {"temperature": 0.0}),
        ("codes 63..575, cfg 2 + uncond, top-k 50 (nextflow-tiny default)", codes, codes_u, {"cfg_scale": 2.0, "top_k": 50, "id_range": [63, 575]}),
        ("codes 63..575, cfg 2 + uncond, greedy", codes, codes_u, {"cfg_scale": 2.0, "temperature": 0.0, "id_range": [63, 575]}),
        ("codes 63..575, cfg 0.5 T 0.9 top-k 40 top-p 0.85", codes, codes_u, {"cfg_scale": 0.5, "temperature": 0.9, "top_k": 40, "top_p": 0.85, "id_range": [63, 575]}),
        ("cfg 0 with uncond given (not read)", plain, uncond_of(plain), {"cfg_scale": 0.0, "top_k": 20}),
        ("vocab 2100, top-k 600 top-p 0.6", big, None, {"top_k": 600, "top_p": 0.6}),
    ]  # fmt: skip
    return cases


def write_golden(out: Path, seed: int = 1234, scale: int = 3) -> None:
    """tests/golden/sampler/: logits.f32 (little-endian f32, every case's cond then uncond,
    row-major) and cases.json (per case: shape, offsets in floats, settings, seed, scale, ids)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    rng = np.random.default_rng(20240611)
    blobs, offset, cases = [], 0, []
    for i, (name, cond, uncond, settings) in enumerate(_cases(rng)):
        case_seed, case_scale = seed + i, scale + (i % 3)
        ids = sample(cond, uncond, seed=case_seed, scale=case_scale, **settings)
        entry = {"name": name, "rows": cond.shape[0], "vocab": cond.shape[1], "cond_offset": offset}
        blobs.append(cond.astype("<f4"))
        offset += cond.size
        if uncond is not None:
            entry["uncond_offset"] = offset
            blobs.append(uncond.astype("<f4"))
            offset += uncond.size
        entry |= {"cfg_scale": 0.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "id_range": None} | settings
        entry |= {"seed": case_seed, "scale": case_scale, "ids": ids.tolist()}
        cases.append(entry)
    (out / "logits.f32").write_bytes(b"".join(b.tobytes() for b in blobs))
    uniforms = [{"seed": s, "scale": k, "position": p, "bits": philox4x32_10([p, k, 0, 0], [s & MASK32, s >> 32])[0],
                 "uniform": float(uniform(s, k, p))}
                for s, k, p in [(0, 0, 0), (1234, 3, 17), (2**40 + 5, 6, 63), (2**64 - 1, 2**32 - 1, 2**32 - 1)]]  # fmt: skip
    doc = {
        "generator": "tools/reference/make_golden.py sampler (tools/reference/philox_sampler.py, numpy "
                     f"{np.__version__}: a port of ops/src/sampling.rs's CPU path)",
        "logits": "logits.f32: little-endian f32; a case's cond is rows*vocab floats from cond_offset (row-major), "
                  "its uncond (if any) the same from uncond_offset",
        "settings": "Rust SamplerConfig: cfg_scale t ((1+t)·cond − t·uncond), temperature (0 = greedy), top_k (0 = off), "
                    "top_p (1 = off), id_range [start, end) or null; sample(cond, uncond, cfg, seed, scale)",
        "ids": "one absolute id per row", "uniforms": uniforms, "cases": cases,
    }  # fmt: skip
    (out / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
