"""The official VAR code on this CPU, timed per stage, for `tools/bench/var_vs_official.sh`.

    python3 tools/bench/var_official.py make VAR_SRC DIR [--depth 16]   # random VAR-dN + VQVAE, saved as published
    python3 tools/bench/var_official.py time VAR_SRC DIR [--reps 3]     # one 256 px image, CFG, per stage (JSON)

VAR_SRC is the official code (FoundationVision/VAR) extracted somewhere outside this
repository: `git -C <mirror> archive HEAD | tar -x -C /tmp/var-src`; nothing of it is
committed. `make` builds the models with the official `build_vae_var` (real shapes: width
64·depth, heads = depth, VQVAE ch 160, V 4096) and random weights, and saves both state dicts
with `torch.save` as FoundationVision publishes them. `time` loads them back and runs
`autoregressive_infer_cfg(B=1, label 207, cfg 4, top_k 900, top_p 0.95)` in f32 after one
warm-up, timing each scale and the decoder (the VQVAE's `fhat_to_img`).
"""
import argparse
import json
import os
import sys
import time


def load_official(src):
    sys.path.insert(0, src)
    import torch
    import dist  # noqa: F401  (the official helpers; on one CPU process they need no init)

    dist.get_device = lambda: torch.device("cpu")
    from models import build_vae_var
    return torch, build_vae_var


def build(torch, build_vae_var, depth):
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):  # the official constructor prints its config
        return build_quiet(torch, build_vae_var, depth)


def build_quiet(torch, build_vae_var, depth):
    vae, var = build_vae_var(device="cpu", patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), V=4096, Cvae=32, ch=160,
                             share_quant_resi=4, num_classes=1000, depth=depth, shared_aln=False, attn_l2_norm=True,
                             flash_if_available=False, fused_if_available=False)
    return vae.eval(), var.eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["make", "time"])
    p.add_argument("src")
    p.add_argument("dir")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    torch, build_vae_var = load_official(a.src)
    torch.manual_seed(0)
    if a.what == "make":
        os.makedirs(a.dir, exist_ok=True)
        vae, var = build(torch, build_vae_var, a.depth)
        # The official init leaves many weights empty (reset_parameters disabled): draw them.
        with torch.no_grad():
            for m in (vae, var):
                for name, t in m.state_dict().items():
                    if t.is_floating_point() and "attn_bias_for_masking" not in name and "zero_k_bias" not in name:
                        t.copy_(torch.randn_like(t) * (0.02 if t.dim() > 1 else 0.1))
        torch.save(vae.state_dict(), os.path.join(a.dir, "vae_ch160v4096z32.pth"))
        torch.save(var.state_dict(), os.path.join(a.dir, f"var_d{a.depth}.pth"))
        print(f"wrote {a.dir}/vae_ch160v4096z32.pth and var_d{a.depth}.pth")
        return
    vae, var = build(torch, build_vae_var, a.depth)
    vae.load_state_dict(torch.load(os.path.join(a.dir, "vae_ch160v4096z32.pth"), weights_only=True, map_location="cpu"))
    var.load_state_dict(torch.load(os.path.join(a.dir, f"var_d{a.depth}.pth"), weights_only=True, map_location="cpu"))
    quant = var.vae_quant_proxy[0]
    marks = []
    inner = quant.get_next_autoregressive_input
    quant.get_next_autoregressive_input = lambda *x: (marks.append(time.perf_counter()), inner(*x))[1]
    vae_ = var.vae_proxy[0]
    decode = vae_.fhat_to_img

    def timed_decode(f):
        t = time.perf_counter()
        out = decode(f)
        marks.append(("decoder", time.perf_counter() - t))
        return out
    vae_.fhat_to_img = timed_decode
    runs = []
    with torch.inference_mode():
        for rep in range(a.reps + 1):
            marks.clear()
            t0 = time.perf_counter()
            var.autoregressive_infer_cfg(B=1, label_B=207, g_seed=rep, cfg=4.0, top_k=900, top_p=0.95)
            total = time.perf_counter() - t0
            stamps = [t0] + [m for m in marks if not isinstance(m, tuple)]
            scales = [(stamps[i + 1] - stamps[i]) * 1e3 for i in range(len(stamps) - 1)]
            dec = [m[1] for m in marks if isinstance(m, tuple)][0] * 1e3
            if rep > 0:
                runs.append({"scales": scales, "decoder": dec, "total": total * 1e3})
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "runs_ms": runs}))


if __name__ == "__main__":
    main()
