//! CPU inner loops written so LLVM vectorizes them, compiled for AVX-512 and AVX2+FMA
//! and chosen at run time (the binary itself targets baseline x86-64).

/// e^x to ~2 ulp for x in [-87, 88], from plain arithmetic (vectorizable, unlike libm):
/// x = n·ln2 + r, e^r by a degree-6 polynomial on |r| <= ln2/2, 2^n by exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_83 + r * (0.008_333_4 + r * 0.001_385_8)))));
    // 2^n from the bits of n + 1.5·2^23 (n is integral, |n| <= 126): integer ops only, so the
    // loop vectorizes (a saturating `n as i32` makes LLVM convert lane by lane).
    let biased = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// Runs `$body` (an expression using only inlined helpers) under the best target features
/// this CPU has, else as baseline code.
macro_rules! dispatch {
    ($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty $body:block) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) -> $ret $body
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) -> $ret $body
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { v3($($arg),*) };
                }
            }
            $body
        }
    };
}

/// Sum with 16 independent lanes (vectorizable, unlike a sequential f32 fold).
#[inline(always)]
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max_lanes(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

dispatch!(softmax_in_place(row: &mut [f32]) -> bool {
    // Returns false (and leaves zeros) when every entry is -inf (a fully masked row).
    let max = max_lanes(row);
    if max == f32::NEG_INFINITY {
        row.iter_mut().for_each(|s| *s = 0.0);
        return false;
    }
    for s in row.iter_mut() {
        *s = if *s == f32::NEG_INFINITY { 0.0 } else { exp(*s - max) };
    }
    let inv = 1.0 / sum_lanes(row);
    row.iter_mut().for_each(|s| *s *= inv);
    true
});

dispatch!(dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
});

dispatch!(axpy(alpha: f32, x: &[f32], y: &mut [f32]) -> () {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
});

dispatch!(sum(xs: &[f32]) -> f32 {
    sum_lanes(xs)
});

// Σ (x − mean)², in 16 lanes.
dispatch!(sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for c in chunks {
        for i in 0..16 {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    acc.iter().sum::<f32>() + tail
});

// out = x·scale + shift, then SiLU (y / (1 + e^−y)) when `silu`.
dispatch!(scale_shift_silu(x: &[f32], scale: f32, shift: f32, silu: bool, out: &mut [f32]) -> () {
    if silu {
        for (o, v) in out.iter_mut().zip(x) {
            let y = v * scale + shift;
            *o = y / (1.0 + exp(-y));
        }
    } else {
        for (o, v) in out.iter_mut().zip(x) {
            *o = v * scale + shift;
        }
    }
});

// out = silu(g) · u
dispatch!(silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) -> () {
    for ((o, a), b) in out.iter_mut().zip(g).zip(u) {
        *o = a / (1.0 + exp(-a)) * b;
    }
});

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate_over_the_range_softmax_uses() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "max relative error {worst:e}");
    }

    #[test]
    fn dispatched_loops_match_plain_ones() {
        let a: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..1031).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((super::dot(&a, &b) as f64 - plain).abs() < 1e-3);
        let mut row = a.clone();
        row[5] = f32::NEG_INFINITY;
        assert!(super::softmax_in_place(&mut row));
        assert_eq!(row[5], 0.0);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
