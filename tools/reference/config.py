"""One config for the tiny NextFlow reference: every switch NEXTFLOW_SPEC.md §7 leaves open.

`config.json` beside this file is the default (128 px ShapeWorld, 16 px per token). Fields are
grouped as the checkpoint is: `vocabulary`, `backbone` (HF Qwen2 names and meanings),
`visual` (3D RoPE, adapter, input maps), `tokenizer` (dual codebook, MSRQ, CNNs), `sampler`.

  python tools/reference/config.py            # rewrite config.json from the defaults below
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import shapeworld as sw

CONFIG_PATH = Path(__file__).with_name("config.json")
MODEL_TYPE = "nextflow"  # top-level "model_type" of a saved config.json (HF style: loaders dispatch on it)
SPECIALS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<unk>")


def shapeworld_words() -> list:
    """Every word ShapeWorld's captions, questions, answers and instructions use, sorted."""
    words = set(sw.SHAPES) | {sw.plural(s) for s in sw.SHAPES} | set(sw.COLORS) | set(sw.REGIONS)
    words |= set(sw.NUMBER_WORDS.values())
    for text in [*sw.RELATIONS, "a an and the on in at of is this there are",
                 "what shape color how many where make remove add move to", "? , :"]:  # fmt: skip
        words |= set(text.split())
    return sorted(words)


@dataclasses.dataclass
class Vocabulary:
    """ids: specials, then text words, then the visual codes `<code_0>..` (spec §7.2)."""

    specials: list = dataclasses.field(default_factory=lambda: list(SPECIALS))
    words: list = dataclasses.field(default_factory=shapeworld_words)
    codebook_size: int = 512

    @property
    def code_start(self) -> int:
        return len(self.specials) + len(self.words)

    @property
    def size(self) -> int:
        return self.code_start + self.codebook_size

    def id(self, token: str) -> int:
        if token in self.specials:
            return self.specials.index(token)
        if token in self.words:
            return len(self.specials) + self.words.index(token)
        return self.specials.index("<unk>")

    def encode(self, text: str) -> list:
        """Lower-case words; `?`, `,` and `:` are words of their own."""
        return [self.id(w) for w in re.findall(r"[a-z]+|[?,:]", text.lower())]

    def decode(self, ids) -> str:
        names = self.specials + self.words
        return " ".join(names[i] if i < len(names) else f"<code_{i - self.code_start}>" for i in ids)


@dataclasses.dataclass
class Backbone:
    """Qwen2 decoder (HF names: model.layers.N.self_attn.q_proj.weight, ...), untied lm_head."""

    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2  # GQA 3:1
    intermediate_size: int = 512  # SwiGLU: down(silu(gate(x)) * up(x))
    rms_norm_eps: float = 1e-6
    attention_bias: bool = True  # q/k/v bias (Qwen2); o_proj never has one
    qk_norm: bool = False  # TokenFlow-style per-head RMSNorm on q, k before RoPE (§7.4)
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False  # one untied head over the whole vocabulary (§4.1)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass
class Visual:
    """How visual tokens enter the transformer (spec §4.2-4.4, §7.1-7.3, §7.7)."""

    # Frequency pairs per RoPE axis (sum = head_dim / 2), Qwen2.5-VL's [16,24,24] scaled down.
    mrope_section: list = dataclasses.field(default_factory=lambda: [4, 6, 6])
    # Which coordinate each axis carries: "srw" = (scale, row, col) as Qwen's (t, h, w);
    # "rws" = (row, col, scale), the paper's tuple order. Text is (t, t, t) either way.
    rope_axes: str = "srw"
    # p_row = C / sqrt(h w) * (i + 0.5). C = side of the last grid: the finest map gets unit
    # spacing, as 1-D positions have.
    rope_scale_c: float = 8.0
    # Next-scale input: "residual" = code(idx_k) alone, bicubic to grid k+1 (NextFlow §4.3);
    # "accumulated" = TokenFlow's f = bicubic(f + code(idx_k), grid k+1).
    input_mode: str = "residual"
    adapter: str = "mlp2x_gelu"  # Linear(code_dim, D) -> GELU(erf) -> Linear(D, D)
    # lvl_embed row of input map k (the map made from scale k's codes, k = 1..K):
    # "source_scale" -> row k-1; "target_scale" -> row k (the scale it predicts). K+1 rows.
    level_embedding: str = "source_scale"
    scale_length_embedding: bool = True  # sinusoid of K (VAR/Transformer formula) on maps
    # Images given as context (understanding, editing source) also carry input map K (the last
    # scale's codes at their own grid) so that no detail is lost; its output predicts <eoi>.
    context_last_scale: bool = True


@dataclasses.dataclass
class Tokenizer:
    """TokenFlow-style dual-codebook MSRQ tokenizer, scaled down (spec §1.3, §2)."""

    image_size: int = 128
    patch_size: int = 16  # pixels per token side: grid = image_size / patch_size
    # (h, w) per scale, coarse to fine; the last one is the grid.
    scales: list = dataclasses.field(default_factory=lambda: [[n, n] for n in (1, 2, 3, 4, 5, 6, 8)])
    codebook_size: int = 512  # one index picks both rows (shared-index lookup, §2.2)
    semantic_dim: int = 16  # embedding_vqkd width
    pixel_dim: int = 8  # embedding_vqgan width; the pixel decoder sees only this part
    pixel_weight: float = 1.0  # d = |zs - es|^2 + w |zp - ep|^2 on L2-normalised halves
    # TokenFlow L2-normalises both halves of every code, so each scale adds a code of the same
    # norm and the finest scale weighs as much as the coarsest. false: VAR's plain codebook
    # (raw rows, squared L2 over [semantic | pixel]), where the residuals of fine scales shrink.
    normalize_codes: bool = True
    teacher_channels: list = dataclasses.field(default_factory=lambda: [16, 32, 64, 64])
    ch: int = 16
    ch_mult: list = dataclasses.field(default_factory=lambda: [1, 1, 2, 4, 8])
    encoder_res_blocks: int = 1  # per level
    decoder_res_blocks: int = 1  # per level (VQGAN's num_res_blocks + 1); 1 keeps 128 px trainable on a CPU
    z_channels: int = 32
    norm_groups: int = 8  # GroupNorm(groups, eps 1e-6)
    # Dynamic resolution (NextFlow §1.4): other canvases the model is trained on, "HxW" (px,
    # height x width) -> their scales (h, w), coarse to fine, ending at the canvas's grid
    # (H/p x W/p). A smaller square is a prefix of `scales` (as NextFlow's 256/512 levels are of
    # its 1024 schedule); an aspect ratio has its own schedule of about the same area per step.
    # The native canvas (image_size x image_size, `scales`) is always offered and not listed.
    schedules: dict = dataclasses.field(default_factory=dict)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def canvases(self) -> list:
        """(height, width) in px of every canvas the model offers, the native one first."""
        extra = [tuple(int(n) for n in key.split("x")) for key in self.schedules]
        return [(self.image_size, self.image_size)] + extra

    def schedule(self, height: int, width: int | None = None) -> list:
        """Scales of a canvas; an error naming the offered canvases for any other."""
        width = height if width is None else width
        if (height, width) == (self.image_size, self.image_size):
            return [list(s) for s in self.scales]
        key = f"{height}x{width}"
        if key not in self.schedules:
            offered = ", ".join(f"{h}x{w}" for h, w in self.canvases())
            raise ValueError(f"no schedule for a {key} canvas; this model offers {offered}")
        return [list(s) for s in self.schedules[key]]

    @property
    def max_scales(self) -> int:
        """Longest schedule: lvl_embed has one row more (spec §4.2: row = source scale - 1 or k)."""
        return max([len(self.scales)] + [len(s) for s in self.schedules.values()])

    @property
    def code_dim(self) -> int:
        return self.semantic_dim + self.pixel_dim

    @property
    def tokens(self) -> int:
        return sum(h * w for h, w in self.scales)


@dataclasses.dataclass
class Sampler:
    """Defaults of the next-scale sampler (spec §4.5, §7.5)."""

    # Guidance weight w: l = l_uncond + w (l_cond - l_uncond); w = 1 is no guidance.
    cfg_scale: float = 3.0
    # "constant": w at every scale; "linear": 1 at the first scale ramping to w at the last.
    cfg_schedule: str = "constant"
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off
    temperature: float = 1.0


@dataclasses.dataclass
class Config:
    vocabulary: Vocabulary = dataclasses.field(default_factory=Vocabulary)
    backbone: Backbone = dataclasses.field(default_factory=Backbone)
    visual: Visual = dataclasses.field(default_factory=Visual)
    tokenizer: Tokenizer = dataclasses.field(default_factory=Tokenizer)
    sampler: Sampler = dataclasses.field(default_factory=Sampler)
    # Accepted (and checked) so that Config(**json.load(f)) reads a saved config.json; not a field.
    model_type: dataclasses.InitVar[str] = MODEL_TYPE

    def __post_init__(self, model_type: str = MODEL_TYPE):
        assert model_type == MODEL_TYPE, f"model_type {model_type!r} is not {MODEL_TYPE!r}"
        for name, kind in [("vocabulary", Vocabulary), ("backbone", Backbone), ("visual", Visual),
                           ("tokenizer", Tokenizer), ("sampler", Sampler)]:  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind(**value))
        self.check()

    def check(self) -> None:
        b, v, t = self.backbone, self.visual, self.tokenizer
        assert b.hidden_size % b.num_attention_heads == 0 and b.num_attention_heads % b.num_key_value_heads == 0
        assert sum(v.mrope_section) * 2 == b.head_dim, "mrope_section must cover head_dim / 2 pairs"
        assert v.rope_axes in ("srw", "rws") and v.input_mode in ("residual", "accumulated")
        assert v.level_embedding in ("source_scale", "target_scale") and v.adapter == "mlp2x_gelu"
        assert self.vocabulary.codebook_size == t.codebook_size
        assert list(t.scales[-1]) == [t.grid, t.grid], "the last scale is the full grid"
        for key, scales in t.schedules.items():
            h, w = (int(n) for n in key.split("x"))
            assert h % t.patch_size == 0 and w % t.patch_size == 0, f"schedule {key}: not a multiple of {t.patch_size} px"
            assert list(scales[0]) == [1, 1] and list(scales[-1]) == [h // t.patch_size, w // t.patch_size], f"schedule {key}: 1x1 to the grid"
        assert t.patch_size == 2 ** (len(t.ch_mult) - 1), "one downsample per level but the last"
        assert self.sampler.cfg_schedule in ("constant", "linear")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["tokenizer"]["normalize_codes"]:  # the default, and the only form the engine reads
            del d["tokenizer"]["normalize_codes"]
        return d

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"model_type": MODEL_TYPE, **self.to_dict()}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path = CONFIG_PATH) -> Config:
        return cls(**json.loads(Path(path).read_text()))


def apply_overrides(cfg: "Config", overrides: list) -> None:
    """--set visual.input_mode=accumulated backbone.hidden_size=256 ... (JSON values or strings)."""
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        target = getattr(cfg, section)
        assert hasattr(target, field), f"--set {key}: no such field"
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        setattr(target, field, value)
    cfg.check()


if __name__ == "__main__":
    Config().save(CONFIG_PATH)
    print(f"wrote {CONFIG_PATH}")
