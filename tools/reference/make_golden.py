"""Golden vectors for the Rust parity tests, one command (CPU, one thread, about a minute):

    python tools/reference/make_golden.py            # all of them
    python tools/reference/make_golden.py qwen2      # or only some: qwen2 nextflow sampler

writes, each directory well under 1.5 MB, byte-identical from run to run:

  tests/golden/qwen2-tiny/          a tiny RANDOM HF transformers Qwen2 (seeded, weights ~N(0, 0.1)):
      config.json, generation_config.json, model.safetensors (save_pretrained), tokenizer.json
      (byte-level BPE, 300 ids), tokenizer_config.json (chat_template, eos_token),
      golden.safetensors (f32: embeddings, layer_outputs, final_norm, logits) and golden.json
      (input ids, greedy continuation of model.generate, tokenizer and chat-template cases).
  tests/golden/qwen2-tiny-sharded/  the same weights as 3 shards + model.safetensors.index.json.
  tests/golden/nextflow-tiny/       from the exported model/assets/nextflow-tiny (rerun this after
      every export): golden.safetensors + golden.json, which describes every tensor.
  tests/golden/sampler/             the Philox sampler (philox_sampler.py, a numpy port of
      ops/src/sampling.rs's CPU path): logits, settings and the ids it draws.

Everything is f32 with no autocast.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import nextflow_ref as nf  # noqa: E402
import shapeworld as sw  # noqa: E402
import training  # noqa: E402
from config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
ASSETS = ROOT / "model" / "assets" / "nextflow-tiny"
LIMIT = 1_500_000  # bytes per directory


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def check_size(path: Path) -> int:
    total = sum(p.stat().st_size for p in path.iterdir())
    assert total < LIMIT, f"{path}: {total} bytes"
    print(f"{path.relative_to(ROOT)}: {total} bytes in {len(list(path.iterdir()))} files")
    return total


# ---------------------------------------------------------------------------------------------
# qwen2-tiny: a random HF Qwen2 with a byte-level BPE tokenizer

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)  # Qwen2's pre-tokenizer split (its tokenizer.json)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 297, 298, 299
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
BPE_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a red circle above a blue square",
    "hello world, this is a tiny test model for the rust engine",
    "the rain in spain stays mainly in the plain",
    "there are three triangles and the stars are on the left",
    "system user assistant: you are a helpful assistant",
    "what shape is this? a circle. what color is the square? blue",
]
QWEN_PROMPT = "hello world, the fox"  # 13 ids
QWEN_STD = 0.2  # 0.1 gives a greedy path that repeats a few ids; 0.2 uses 27 distinct ids, top-2 margin >= 0.04


def qwen2_tokenizer():
    """Byte-level BPE like Qwen2's (NFC, regex split, ByteLevel): 256 bytes + 41 merges, then
    the three specials at 297..299."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]  # fmt: skip
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=297, min_frequency=1, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(BPE_CORPUS, trainer)
    assert tok.get_vocab_size() == 297, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    assert [tok.token_to_id(s) for s in QWEN_SPECIALS] == [297, 298, 299]
    return tok


def qwen2_tokenizer_config() -> dict:
    added = {str(297 + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for i, s in enumerate(QWEN_SPECIALS)}  # fmt: skip
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "errors": "replace", "model_max_length": 256, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
    }  # fmt: skip


def qwen2_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, torch_dtype="float32", bos_token_id=None, eos_token_id=299, pad_token_id=297,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(config, attn_implementation="eager", torch_dtype=torch.float32)
    # HF's init (std 0.02, zero biases, unit norms) gives near-flat logits, useless for greedy
    # parity: draw every weight again, N(0, QWEN_STD), norms 1 + N(0, QWEN_STD), biases too.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=generator) * QWEN_STD
            p.copy_(1 + noise if name.endswith("norm.weight") else noise)
    return model.eval()


def qwen2_tiny(out: Path, sharded: Path) -> None:
    from transformers import AutoTokenizer

    fresh_dir(out)
    fresh_dir(sharded)
    model = qwen2_model()
    model.save_pretrained(out, safe_serialization=True)
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="200KB")
    # transformers 5 writes rope_theta under rope_parameters; Hub Qwen2 configs (and our Rust
    # loader) have it at the top level too.
    for directory in (out, sharded):
        cfg_path = directory / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["rope_theta"] = cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
        write_json(cfg_path, dict(sorted(cfg.items())))
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) >= 2 and (sharded / "model.safetensors.index.json").exists()
    qwen2_tokenizer().save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", qwen2_tokenizer_config())
    hf_tok = AutoTokenizer.from_pretrained(out)

    ids = hf_tok(QWEN_PROMPT)["input_ids"]
    input_ids = torch.tensor([ids])
    captured = {}
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, (o[0] if isinstance(o, tuple) else o)))
             for i, layer in enumerate(model.model.layers)]  # fmt: skip
    hooks.append(model.model.norm.register_forward_hook(lambda m, a, o: captured.__setitem__("norm", o)))
    with torch.no_grad():
        logits = model(input_ids).logits[0].float()
    for h in hooks:
        h.remove()
    with torch.no_grad():
        out_gen = model.generate(input_ids, max_new_tokens=32, do_sample=False, output_scores=True, return_dict_in_generate=True)
    generated = out_gen.sequences[0, len(ids) :].tolist()
    margins = [float(top[0] - top[1]) for top in (score[0].topk(2).values for score in out_gen.scores)]
    assert len(set(generated)) > 8, f"greedy continuation is degenerate: {generated}"
    assert min(margins) > 1e-3, f"greedy path has near ties: {min(margins)}"
    tensors = {
        "embeddings": model.model.embed_tokens.weight[input_ids[0]].detach(),
        "layer_outputs": torch.stack([captured[i][0] for i in range(len(model.model.layers))]),
        "final_norm": captured["norm"][0],
        "logits": logits,
    }
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, out / "golden.safetensors", metadata={"format": "pt"})

    import tokenizers
    import transformers

    messages = [{"role": "system", "content": "You are a tiny test model."}, {"role": "user", "content": "Hello, world!"}]
    chat_text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    texts = ["", "hello world", "The Quick  brown\tfox\n\njumps!", "naïve café 123 <|im_end|> end", "a red circle above a blue square"]
    write_json(out / "golden.json", {
        "generator": "tools/reference/make_golden.py", "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "torch": torch.__version__,
        "init": f"torch.manual_seed(0), then every parameter in sorted name order redrawn from torch.Generator().manual_seed(0): "
                f"N(0, {QWEN_STD}), norm weights 1 + N(0, {QWEN_STD})",
        "prompt": QWEN_PROMPT, "input_ids": ids,
        "tensors": {
            "embeddings": "[T, hidden] embed_tokens rows of input_ids",
            "layer_outputs": "[layers, T, hidden] output of each decoder layer (residual stream, before the final norm)",
            "final_norm": "[T, hidden] model.norm of the last layer output",
            "logits": "[T, vocab] lm_head logits at every position of input_ids (f32, eager attention, one pass, no cache)",
        },
        "greedy": {"call": "model.generate(input_ids, max_new_tokens=32, do_sample=False)", "eos_token_id": 299,
                   "new_ids": generated, "stopped_at_eos": len(generated) < 32,
                   "min_top2_margin": round(min(margins), 4), "note": "HF generate uses its KV cache; margin = smallest top-1 minus top-2 logit along the path"},
        "tokenizer_cases": [{"text": t, "ids": hf_tok(t)["input_ids"]} for t in texts],
        "chat": {"messages": messages, "add_generation_prompt": True, "text": chat_text, "ids": hf_tok(chat_text, add_special_tokens=False)["input_ids"]},
    })  # fmt: skip
    shards = sorted(sharded.glob("*.safetensors"))
    merged = {}
    for shard in shards:
        merged.update(load_file(shard))
    single = load_file(out / "model.safetensors")
    assert merged.keys() == single.keys() and all(torch.equal(merged[k], single[k]) for k in single)
    check_size(out)
    check_size(sharded)


# ---------------------------------------------------------------------------------------------
# nextflow-tiny: the exported model, piece by piece

NEXTFLOW_PROMPT = "a red circle above a blue square"
IMAGE_CLAUSES = {"include": [{"class": "square", "count": 1, "color": "blue"},
                             {"class": "circle", "count": 1, "color": "red", "position": ["above", 0]}]}  # fmt: skip
IMAGE_SEED = 0
GENERATION_SEED = 1234
TRANSFORMER_PREFIXES = ("model.", "lm_head.")


def load_exported(assets: Path) -> tuple:
    """(cfg, tokenizer, model) from config.json + model.safetensors exactly as exported."""
    cfg = Config.load(assets / "config.json")
    weights = load_file(assets / "model.safetensors")
    weights = {k: v.float() for k, v in weights.items()}
    tok = nf.VisualTokenizer(cfg)
    missing, unexpected = tok.load_state_dict({k: v for k, v in weights.items() if not k.startswith(TRANSFORMER_PREFIXES)}, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("encoder_vqkd.head.", "decode_task_layer.")) for k in missing), missing  # training-only
    model = nf.NextFlow(cfg)
    model.load_state_dict({k: v for k, v in weights.items() if k.startswith(TRANSFORMER_PREFIXES)}, strict=True)
    return cfg, tok.eval(), model.eval()


def layer0_qk(model: nf.NextFlow, batch: dict) -> tuple:
    """Layer 0's q [heads, T, head_dim] and k [kv_heads, T, head_dim] after RoPE, as Attention.forward."""
    cfg, attn = model.cfg, model.model.layers[0].self_attn
    x = model.model.layers[0].input_layernorm(model.embed(batch))
    cos, sin = nf.rope_cos_sin(batch["positions"], cfg)
    t = x.shape[1]
    q = attn.q_proj(x).view(1, t, attn.heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(1, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
    return nf.apply_rope(q, cos, sin)[0], nf.apply_rope(k, cos, sin)[0]


def nextflow_tiny(assets: Path, out: Path, sampler: str = "philox") -> None:
    fresh_dir(out)
    cfg, tok, model = load_exported(assets)
    vocab, scales = cfg.vocabulary, [tuple(s) for s in cfg.tokenizer.scales]
    prompt_ids = [vocab.id("<bos>")] + vocab.encode(NEXTFLOW_PROMPT)
    assert vocab.id("<unk>") not in prompt_ids

    # The test image: ShapeWorld's rendering of the prompt's scene, in [-1, 1].
    objects = sw.scene_for_clauses(np.random.default_rng(IMAGE_SEED), IMAGE_CLAUSES, cfg.tokenizer.image_size)
    image = training.to_tensor([sw.render(objects, cfg.tokenizer.image_size)])
    with torch.no_grad():
        indices = tok.encode(image)  # f32, no autocast
        decoded = tok.decode(indices)

        # Prompt rows alone (<bos> words <boi>): embeddings, layer 0's q and k after RoPE.
        b = nf.SequenceBuilder(cfg, tok.quantize)
        b.text(prompt_ids + [vocab.id("<boi>")])
        prompt = nf.collate([b.tensors()], vocab.id("<pad>"))
        embeddings = model.embed(prompt)[0]
        q0, k0 = layer0_qk(model, prompt)

        # Teacher-forced t2i sequence: <bos> words <boi> maps 1..K-1, targets the K scales.
        b = nf.SequenceBuilder(cfg, tok.quantize)
        b.text(prompt_ids)
        b.image([i[0] for i in indices], generate=True, weights=nf.scale_weights(scales, 0.9))
        rows = b.tensors()
        batch = nf.collate([rows], vocab.id("<pad>"))
        outputs = []
        hooks = [layer.register_forward_hook(lambda m, a, o: outputs.append(o)) for layer in model.model.layers]
        final = model(batch)[0]
        for h in hooks:
            h.remove()
        target_rows = (rows["targets"] >= 0).nonzero()[:, 0]
        code_logits = model.code_logits(final[target_rows])

        if sampler == "philox":
            generated = generate(model, tok, cfg, prompt_ids, cfg.sampler, "philox")
            greedy = generate(model, tok, cfg, prompt_ids, dataclasses.replace(cfg.sampler, temperature=0.0), "philox")
        else:  # argmax through torch.multinomial on a one-hot distribution
            generated = greedy = generate(model, tok, cfg, prompt_ids, dataclasses.replace(cfg.sampler, top_k=1), "torch")

    # The targets are the image's codes, scale by scale, in row order.
    assert rows["targets"][target_rows].tolist() == [vocab.code_start + int(i) for idx in indices for i in idx[0]]
    tensors = {
        "image": image[0], "decoded_image": decoded[0],
        "prompt.embeddings": embeddings, "prompt.layer0_q": q0, "prompt.layer0_k": k0,
        "sequence.features": rows["features"], "sequence.positions": rows["positions"],
        "sequence.layer_outputs": torch.stack(outputs)[:, 0], "sequence.final_norm": final,
        "sequence.code_logits": code_logits,
    }  # fmt: skip
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, out / "golden.safetensors", metadata={"format": "pt"})
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    write_json(out / "golden.json", {
        "generator": "tools/reference/make_golden.py", "torch": torch.__version__,
        "model": {"dir": "model/assets/nextflow-tiny", "model.safetensors sha256": sha256(assets / "model.safetensors"),
                  "config.json sha256": sha256(assets / "config.json"),
                  "note": "describes exactly these weights (loaded back from the export; training-only tokenizer weights absent)"},
        "precision": "f32 everywhere, no autocast (training encodes images under bf16 autocast; these goldens do not)",
        "prompt": NEXTFLOW_PROMPT, "prompt_ids": prompt_ids, "prompt_tokens": vocab.decode(prompt_ids),
        "prompt_rows": {"ids": prompt_ids + [vocab.id("<boi>")], "positions": "(t, t, t), t = 0..T-1",
                        "note": "<bos> words <boi>, text rows only"},
        "image": {"source": "shapeworld.render(shapeworld.scene_for_clauses(np.random.default_rng(0), clauses, 128))",
                  "clauses": IMAGE_CLAUSES, "objects": [dataclasses.asdict(o) for o in objects],
                  "layout": "[3, H, W] RGB in [-1, 1] = uint8 / 127.5 - 1"},
        "scales": [list(s) for s in scales],
        "msrq_indices": {"call": "VisualTokenizer.encode(image) in f32", "per_scale": [idx[0].tolist() for idx in indices]},
        "decoded_image": "VisualTokenizer.decode(msrq_indices): decoder(post_quant_conv(pixel part of f_hat)).clamp(-1, 1), [3, H, W]",
        "sequence": {
            "note": "teacher-forced t2i rows built by SequenceBuilder: text(prompt_ids); image(msrq_indices, generate=True); "
                    "one sequence, no padding, every row a valid key; attention_mask: causal, plus bidirectional "
                    "among rows of the same block (block >= 0)",
            "ids": rows["ids"].tolist(), "visual": rows["visual"].tolist(), "levels": rows["levels"].tolist(),
            "blocks": rows["blocks"].tolist(), "targets": rows["targets"].tolist(),
            "features": "tensor sequence.features [T, code_dim]: input-map cells (zeros on text rows)",
            "positions": "tensor sequence.positions [T, 3] (p_s, p_row, p_col)",
        },
        "code_logits": {"rows": target_rows.tolist(), "rows_per_scale": [h * w for h, w in scales],
                        "note": "model.code_logits(final_norm[rows]): lm_head rows code_start.. only, [rows, codebook]; "
                                "rows are the <boi> row then each map's cells, scale by scale"},
        "generation": generated["meta"] | {"indices_per_scale": generated["indices"],
                                            "note": "the config's sampler settings" if sampler == "philox" else "top_k = 1: argmax"},
        "generation_greedy": greedy["meta"] | {"indices_per_scale": greedy["indices"],
                                               "note": "temperature 0: argmax of the CFG logits, first index on ties"},
        "vocabulary": {"code_start": vocab.code_start, "size": vocab.size},
        "tensors": {k: {"shape": shapes[k], "what": TENSOR_DOC[k]} for k in tensors},
    })  # fmt: skip
    check_size(out)


TENSOR_DOC = {
    "image": "test image [3, H, W] in [-1, 1]",
    "decoded_image": "decoder output for the image's MSRQ indices [3, H, W], clamped to [-1, 1]",
    "prompt.embeddings": "embed_tokens rows of <bos> words <boi> [T, hidden]",
    "prompt.layer0_q": "layer 0 q after bias and 3D RoPE, prompt rows [heads, T, head_dim]",
    "prompt.layer0_k": "layer 0 k after bias and 3D RoPE, prompt rows [kv_heads, T, head_dim]",
    "sequence.features": "input-map features of every row of the teacher-forced sequence [T, code_dim]",
    "sequence.positions": "3D RoPE positions of every row [T, 3]",
    "sequence.layer_outputs": "each decoder layer's output (residual stream) over the teacher-forced sequence [layers, T, hidden]",
    "sequence.final_norm": "final RMSNorm output over the teacher-forced sequence [T, hidden]",
    "sequence.code_logits": "code logits at the target rows [rows, codebook], rows in golden.json code_logits.rows",
}


def generate(model, tok, cfg, prompt_ids: list, settings, sampling: str) -> dict:
    """A full seeded generation: nextflow_ref.generate with CFG (batch of two) and KV cache."""
    idx = nf.generate(model, tok.quantize, [prompt_ids], settings, seed=GENERATION_SEED, sampling=sampling)
    w, linear = settings.cfg_scale, settings.cfg_schedule == "linear"
    meta = {"sampling": sampling, "seed": GENERATION_SEED, "settings": dataclasses.asdict(settings),
            "cfg_weight": w, "cfg_schedule": "linear: w_k = 1 + (w - 1) k / (K - 1)" if linear else "constant: w at every scale",
            "uncond_prompt_ids": [cfg.vocabulary.id("<bos>")], "kv_cache": True,
            "call": f"nextflow_ref.generate(model, tok.quantize, [prompt_ids], settings, seed={GENERATION_SEED}, sampling={sampling!r})"}  # fmt: skip
    if sampling == "philox":
        meta |= {
            "rust_sampler_config": {"cfg_scale": "w_k - 1" if linear else w - 1.0, "temperature": settings.temperature,
                                    "top_k": settings.top_k, "top_p": settings.top_p,
                                    "id_range": "[code_start, vocab) on full-vocabulary logits, or none on the code logits alone"},
            "cfg_formula": "Rust's: l = (1+t)·cond − t·uncond with t = w − 1 (then / temperature)",
            "philox": "seed = the seed; scale counter = 0-based scale index k; position = row-major index of the row in "
                      "the scale's cond logits [batch, h*w] (batch of one: the cell index)",
        }  # fmt: skip
    else:
        meta["cfg_formula"] = "l_u + w (l_c - l_u) (nextflow_ref)"
    return {"indices": [i[0].tolist() for i in idx], "meta": meta}


# ---------------------------------------------------------------------------------------------


EVAL_N, EVAL_BATCH, EVAL_SEED = 10, 25, 0


def eval_shapes(assets: Path, out: Path) -> None:
    """The reference's ShapeEval t2i score of the exported model on eval_prompts(EVAL_N), as
    `nextflow eval shapes --n 10 --batch 25 --seed 0` generates them: chunks of EVAL_BATCH
    prompts, seed EVAL_SEED + chunk start, the config's sampler, Philox sampling (the Rust
    sampler's numpy port), CFG against <bos>. CI fails if Rust scores 0.05 below this."""
    import shapeeval as se

    cfg, tok, model = load_exported(assets)
    vocab, results = cfg.vocabulary, []
    prompts = sw.eval_prompts(EVAL_N)
    with torch.no_grad():
        for start in range(0, len(prompts), EVAL_BATCH):
            entries = prompts[start : start + EVAL_BATCH]
            ids = [[vocab.id("<bos>")] + vocab.encode(e["prompt"]) for e in entries]
            idx = nf.generate(model, tok.quantize, ids, cfg.sampler, seed=EVAL_SEED + start, sampling="philox")
            images = training.to_uint8(tok.decode(idx))
            results += [(e["task"], se.evaluate_clauses(se.detect(im), e["clauses"])[0]) for e, im in zip(entries, images)]
    scores = se.score_t2i(results)
    doc = {"generator": "tools/reference/make_golden.py eval", "model.safetensors sha256": hashlib.sha256((assets / "model.safetensors").read_bytes()).hexdigest(),
           "n_per_task": EVAL_N, "batch": EVAL_BATCH, "seed": EVAL_SEED, "sampling": "philox", "sampler": dataclasses.asdict(cfg.sampler),
           "correct": [bool(ok) for _, ok in results], "t2i": scores}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_shapes.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(scores))


def nextflow_dynres(out: Path) -> None:
    """Dynamic resolution: a small random NextFlow with the embedded model's architecture
    switches (configs/shapeworld64.json: accumulated inputs, schedules 48x48 / 48x96 / 96x48)
    at small widths, exported as a model directory (config.json, model.safetensors,
    tokenizer.json) plus golden.json: seeded Philox generations (the config's sampler, CFG vs
    <bos>) on every canvas, their indices per scale and decoded images (golden.safetensors)."""
    import export

    fresh_dir(out)
    cfg = Config.load(Path(__file__).with_name("configs") / "shapeworld64.json")
    cfg.backbone.hidden_size, cfg.backbone.intermediate_size, cfg.backbone.num_hidden_layers = 48, 96, 2
    cfg.backbone.num_attention_heads, cfg.backbone.num_key_value_heads = 3, 1
    cfg.visual.mrope_section = [2, 3, 3]
    cfg.tokenizer.codebook_size = cfg.vocabulary.codebook_size = 64
    cfg.tokenizer.ch, cfg.tokenizer.teacher_channels, cfg.tokenizer.z_channels, cfg.tokenizer.norm_groups = 4, [8, 8, 8], 8, 4
    cfg.check()
    torch.manual_seed(0)
    model, tok = nf.NextFlow(cfg).eval(), nf.VisualTokenizer(cfg).eval()
    with torch.no_grad():  # a wider spread of logits than the default init, so sampling is not uniform
        model.lm_head.weight.mul_(3.0)
    tensors = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    tensors |= {k: v.float().contiguous() for k, v in tok.state_dict().items() if not k.startswith(export.TRAINING_ONLY)}
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    cfg.save(out / "config.json")
    (out / "tokenizer.json").write_text(json.dumps(export.tokenizer_json(cfg), indent=1) + "\n")
    vocab = cfg.vocabulary
    prompt_ids = [vocab.id("<bos>")] + vocab.encode(NEXTFLOW_PROMPT)
    cases, images = [], {}
    with torch.no_grad():
        for h, w in cfg.tokenizer.canvases():
            scales = cfg.tokenizer.schedule(h, w)
            idx = nf.generate(model, tok.quantize, [prompt_ids], cfg.sampler, seed=GENERATION_SEED, sampling="philox", scales=scales)
            images[f"{h}x{w}"] = tok.decode(idx, scales)[0]
            cases.append({"canvas": [h, w], "scales": scales, "indices_per_scale": [i[0].tolist() for i in idx]})
    save_file({k: v.float().contiguous() for k, v in images.items()}, out / "golden.safetensors", metadata={"format": "pt"})
    write_json(out / "golden.json", {
        "generator": "tools/reference/make_golden.py dynres", "torch": torch.__version__,
        "prompt": NEXTFLOW_PROMPT, "seed": GENERATION_SEED, "sampling": "philox", "sampler": dataclasses.asdict(cfg.sampler),
        "note": "random weights (torch.manual_seed(0), lm_head x 3); images [3, H, W] in golden.safetensors by canvas HxW",
        "cases": cases,
    })  # fmt: skip
    check_size(out)


PARTS = ["qwen2", "nextflow", "sampler", "eval", "dynres"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="qwen2, nextflow, sampler (default: all)")
    parser.add_argument("--assets", type=Path, default=ASSETS)
    parser.add_argument("--generation-sampler", default="philox", choices=["philox", "top_k_1"])
    args = parser.parse_args(argv)
    args.parts = args.parts or PARTS
    assert set(args.parts) <= set(PARTS), f"parts are {PARTS}"
    torch.set_num_threads(1)
    if "qwen2" in args.parts:
        qwen2_tiny(GOLDEN / "qwen2-tiny", GOLDEN / "qwen2-tiny-sharded")
    if "nextflow" in args.parts:
        nextflow_tiny(args.assets, GOLDEN / "nextflow-tiny", args.generation_sampler)
    if "dynres" in args.parts:
        nextflow_dynres(GOLDEN / "nextflow-dynres")
    if "eval" in args.parts:
        eval_shapes(args.assets, GOLDEN / "nextflow-tiny")
    if "sampler" in args.parts:
        import philox_sampler

        philox_sampler.write_golden(GOLDEN / "sampler")
        check_size(GOLDEN / "sampler")


if __name__ == "__main__":
    sys.exit(main())
