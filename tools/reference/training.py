"""What the two training scripts share: threads, image tensors, schedule, checkpoints, logs."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

RUNS = Path(__file__).with_name("runs")


def set_threads(n: int) -> None:
    """Training here shares a 2-core machine: one thread unless told otherwise."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set by an earlier parallel op
        pass


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): there bf16 autocast doubles training speed;
    without them (e.g. an AVX2-only EPYC) PyTorch emulates bf16 and a matmul is ~30x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


BF16 = {"auto": cpu_has_bf16(), "on": True, "off": False}[os.environ.get("NEXTFLOW_TRAIN_BF16", "auto")]


def autocast():
    """bf16 autocast where the CPU runs bf16 natively (NEXTFLOW_TRAIN_BF16=auto|on|off)."""
    return torch.autocast("cpu", torch.bfloat16, enabled=BF16)


def canvas_of(t, step: int, seed: int = 0) -> tuple:
    """(height, width) of the batch at `step`: the native canvas half the time, else one of the
    config's other schedules (dynamic resolution), a pure function of (seed, step)."""
    canvases = t.canvases()
    if len(canvases) == 1:
        return canvases[0]
    r = np.random.default_rng([seed, 0xCA, step]).random()
    return canvases[0] if r < 0.5 else canvases[1 + int((r - 0.5) * 2 * (len(canvases) - 1))]


def to_tensor(images) -> torch.Tensor:
    """uint8 HxWx3 images -> [B,3,H,W] in [-1,1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] about [-1,1] -> uint8 [B,H,W,3] (TokenFlow: clamp(x*127.5+128))."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def learning_rate(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine down to floor * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class Checkpoints:
    """Saves state() every `minutes` and on demand, atomically (a killed run leaves the last one)."""

    def __init__(self, path: Path, minutes: float):
        self.path, self.every, self.last = Path(path), minutes * 60, time.time()

    def due(self) -> bool:
        return time.time() - self.last >= self.every

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self.last = time.time()

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=False) if self.path.exists() else None


class Log:
    """One JSON object per line, to stdout and to a file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **fields) -> None:
        line = json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in fields.items()})
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
