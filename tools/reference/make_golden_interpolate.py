"""Golden values of PyTorch's F.interpolate for the Rust interpolation tests.

    python tools/reference/make_golden_interpolate.py   # writes tests/golden/interpolate.json

Inputs are deterministic (no RNG): x[n, c, i, j] = sin(0.37·(flat index) + 0.1·c). Every case
is float32 NCHW, as PyTorch computes it; the Rust test also checks NHWC views of the same data.
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F

CASES = [
    # (name, mode, (n, c, h, w), (out_h, out_w))
    ("bicubic 3x3->4x4", "bicubic", (1, 2, 3, 3), (4, 4)),
    ("bicubic 7x5->13x11", "bicubic", (1, 3, 7, 5), (13, 11)),
    ("bicubic 48->64", "bicubic", (1, 1, 48, 48), (64, 64)),
    ("bicubic 1x2->4x8 (1:2)", "bicubic", (2, 2, 1, 2), (4, 8)),
    ("bicubic 8x4->3x2 down", "bicubic", (1, 2, 8, 4), (3, 2)),
    ("bicubic 1x1->5x5", "bicubic", (1, 3, 1, 1), (5, 5)),
    ("area 8x8->3x3", "area", (1, 2, 8, 8), (3, 3)),
    ("area 13x11->7x5", "area", (2, 3, 13, 11), (7, 5)),
    ("area 64->48", "area", (1, 1, 64, 64), (48, 48)),
    ("area 4x8->1x2 (1:2)", "area", (1, 2, 4, 8), (1, 2)),
    ("area 3x3->5x5 up", "area", (1, 1, 3, 3), (5, 5)),
    ("nearest x2 4x3->8x6", "nearest", (1, 2, 4, 3), (8, 6)),
    ("nearest 7x5->3x11", "nearest", (1, 2, 7, 5), (3, 11)),
]


def main():
    out = []
    for name, mode, shape, size in CASES:
        n, c, h, w = shape
        x = torch.tensor(
            [math.sin(0.37 * i + 0.1 * ((i // (h * w)) % c)) for i in range(n * c * h * w)], dtype=torch.float32
        ).reshape(shape)
        kwargs = {"align_corners": False} if mode == "bicubic" else {}
        y = F.interpolate(x, size=size, mode=mode, **kwargs)
        out.append(
            {
                "name": name,
                "mode": mode,
                "in_shape": list(shape),
                "out_hw": list(size),
                "input": x.flatten().tolist(),
                "output": y.flatten().tolist(),
            }
        )
    path = pathlib.Path(__file__).resolve().parents[2] / "tests" / "golden" / "interpolate.json"
    path.write_text(json.dumps({"generator": "tools/reference/make_golden_interpolate.py", "torch": torch.__version__, "cases": out}))
    print(f"wrote {path} ({len(out)} cases)")


if __name__ == "__main__":
    main()
