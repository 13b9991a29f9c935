"""Fixtures for the pure-Rust PyTorch checkpoint reader (model/src/torch_file.rs, model/src/pickle.rs,
tests/torch_checkpoint.rs).

    OMP_NUM_THREADS=1 python tools/reference/make_torch_fixtures.py   # writes tests/golden/torch/

Writes, each a few KB:
  state_dict.pt     torch.save of an OrderedDict: f32, f16, bf16, f64, i64, i32, i16, i8, u8 and bool
                    tensors, a 0-dim scalar, empty tensors, a transposed (non-contiguous) view, an
                    expanded (stride 0) view, two slices sharing one storage at different offsets, a
                    tiny nn.Sequential's state_dict (names `seq.*`), one nn.Parameter saved directly,
                    one tensor stored twice under two names (memoised), plus three non-tensor
                    entries (an int, None, a string) that a reader skips
  state_dict.json   name -> {dtype, shape, values}: values flattened row-major as numbers (f16 and
                    bf16 as their f32 value, bool as 0/1); the non-tensor entries are not in it
  protocol4.pt      a small state dict saved with pickle protocol 4 (FRAME, SHORT_BINUNICODE,
                    MEMOIZE, STACK_GLOBAL), with state_protocol4.json alike
  nested.pt         {"model": <a state dict>, "optimizer": <Adam state_dict after one step>, "step": 7}
  malicious.pt      a zip checkpoint whose data.pkl REDUCEs os.system("echo pwned > /tmp/pwned")
                    (saved, never loaded: nothing here unpickles it)
  legacy.pt         the pre-1.6 format (_use_new_zipfile_serialization=False)
  truncated.pt      the first half of state_dict.pt
Deterministic: fixed seeds, and torch's zip writer stores fixed timestamps, so every file comes out
byte for byte the same, except legacy.pt (its storage keys are Python object ids).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "tests" / "golden" / "torch"
DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def expected(sd: dict) -> dict:
    """name -> dtype, shape and row-major values of every tensor in `sd`."""
    out = {}
    for name, t in sd.items():
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach()
        values = t.to(torch.float64).reshape(-1).tolist() if t.is_floating_point() else t.reshape(-1).to(torch.int64).tolist()
        out[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "values": values}
    return out


def save(obj, name: str, **kw) -> None:
    torch.save(obj, OUT / name, **kw)


def state_dict() -> OrderedDict:
    torch.manual_seed(0)
    sd = OrderedDict()
    sd["f32"] = torch.randn(3, 4)
    sd["f16"] = torch.randn(2, 3).half()
    sd["bf16"] = torch.randn(5).bfloat16()
    sd["f64"] = torch.randn(2, 2, dtype=torch.float64)
    sd["i64"] = torch.arange(-3, 3, dtype=torch.int64).reshape(2, 3)
    sd["i32"] = torch.tensor([1, -2, 2**31 - 1], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["empty_1d"] = torch.zeros(0, dtype=torch.float16)
    sd["transposed"] = torch.randn(3, 5).t()  # [5, 3], strides (1, 5)
    sd["expanded"] = torch.randn(3, 1).expand(3, 4)  # strides (1, 0)
    big = torch.randn(8, 2)
    sd["slice_a"] = big[2:5]  # storage offset 4
    sd["slice_b"] = big[5:]  # storage offset 10, same storage
    sd["column"] = big[:, 1]  # [8], stride 2, offset 1, same storage
    seq = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2, bias=False))
    for k, v in seq.state_dict().items():
        sd["seq." + k] = v
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2))
    tied = torch.randn(2, 3)
    sd["tied_a"] = tied
    sd["tied_b"] = tied  # the same object: pickled once, then fetched from the memo
    sd["an_int"] = 42
    sd["nothing"] = None
    sd["a_string"] = "hello"
    return sd


class Pwn:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/pwned",))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sd = state_dict()
    save(sd, "state_dict.pt")
    (OUT / "state_dict.json").write_text(json.dumps(expected(sd), indent=1) + "\n")

    torch.manual_seed(1)
    p4 = {"w": torch.randn(2, 3), "b": torch.randn(3).half(), "n": torch.tensor(5)}
    save(p4, "protocol4.pt", pickle_protocol=4)
    (OUT / "state_protocol4.json").write_text(json.dumps(expected(p4), indent=1) + "\n")

    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7}, "nested.pt")
    (OUT / "nested.json").write_text(json.dumps(expected(model.state_dict()), indent=1) + "\n")

    save({"weight": Pwn()}, "malicious.pt")
    save(OrderedDict(w=torch.arange(4, dtype=torch.float32)), "legacy.pt", _use_new_zipfile_serialization=False)
    data = (OUT / "state_dict.pt").read_bytes()
    (OUT / "truncated.pt").write_bytes(data[: len(data) // 2])
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:7d}  {f.relative_to(OUT.parents[2])}")


if __name__ == "__main__":
    main()
