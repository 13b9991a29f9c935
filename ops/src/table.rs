//! The op table: every op of the set, by name. The op-coverage test walks it and fails
//! when an op here has no case there, so a new op cannot land untested.

/// One row of the op table.
#[derive(Clone, Copy, Debug)]
pub struct OpEntry {
    pub name: &'static str,
    /// The kernel(s) it lowers to in `nextflow-shaders`.
    pub kernel: &'static str,
}

pub const OP_TABLE: &[OpEntry] = &[
    OpEntry { name: "neg", kernel: "elementwise::unary_strided" },
    OpEntry { name: "exp", kernel: "elementwise::unary_strided" },
    OpEntry { name: "sqrt", kernel: "elementwise::unary_strided" },
    OpEntry { name: "rsqrt", kernel: "elementwise::unary_strided" },
    OpEntry { name: "tanh", kernel: "elementwise::unary_strided" },
    OpEntry { name: "silu", kernel: "elementwise::unary_strided" },
    OpEntry { name: "gelu_erf", kernel: "elementwise::unary_strided" },
    OpEntry { name: "cast", kernel: "elementwise::unary_strided (copy)" },
    OpEntry { name: "contiguous", kernel: "elementwise::unary_strided (copy)" },
    OpEntry { name: "add", kernel: "elementwise::binary_strided" },
    OpEntry { name: "sub", kernel: "elementwise::binary_strided" },
    OpEntry { name: "mul", kernel: "elementwise::binary_strided" },
    OpEntry { name: "div", kernel: "elementwise::binary_strided" },
    OpEntry { name: "max", kernel: "elementwise::binary_strided" },
    OpEntry { name: "sum", kernel: "reduce::reduce_rows" },
    OpEntry { name: "reduce_max", kernel: "reduce::reduce_rows" },
    OpEntry { name: "mean", kernel: "reduce::reduce_rows" },
    OpEntry { name: "argmax", kernel: "reduce::argmax_rows" },
    OpEntry { name: "softmax", kernel: "reduce::softmax_rows" },
    OpEntry { name: "rms_norm", kernel: "reduce::rms_norm_rows" },
    OpEntry { name: "embedding", kernel: "gather::embedding" },
    OpEntry { name: "concat", kernel: "elementwise::unary_strided (copy into views)" },
    OpEntry { name: "matmul", kernel: "matmul::matmul_tiled (each MATMUL_TILES candidate)" },
    OpEntry { name: "matmul_gemv", kernel: "matmul::gemv_k_contiguous, matmul::gemv_n_contiguous" },
    OpEntry { name: "linear", kernel: "matmul (transposed weight view)" },
    OpEntry { name: "attention", kernel: "attention::flash_attention" },
    OpEntry { name: "kv_cache", kernel: "elementwise::unary_strided (copy into the cache)" },
    OpEntry { name: "rope", kernel: "attention::rope" },
    OpEntry { name: "swiglu", kernel: "elementwise::binary_strided (silu·mul)" },
    OpEntry { name: "add_rms_norm", kernel: "reduce::add_rms_norm_rows" },
    OpEntry { name: "interpolate", kernel: "image::interpolate (nearest, area, bicubic; NCHW and NHWC)" },
    OpEntry { name: "conv2d", kernel: "image::conv2d" },
    OpEntry { name: "group_norm", kernel: "image::group_norm (+ SiLU)" },
    OpEntry { name: "spatial_attention", kernel: "attention::flash_attention, or matmul + softmax" },
    OpEntry { name: "nearest_codes", kernel: "image::nearest_codes (plain and dual codebook, top-k)" },
    OpEntry { name: "sample", kernel: "sampling::sample_rows (CFG, range, temperature, top-k/top-p, Philox draw)" },
];
