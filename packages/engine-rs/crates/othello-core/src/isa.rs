//! CPU variants: the hot functions compiled several times, one chosen at run time.
//!
//! A wheel is built for its platform's baseline (x86-64: SSE2, no `popcnt`), so
//! code compiled the ordinary way runs every bit count and shift the slow generic
//! way. The hot paths (perft, move generation, flips, mobility, pattern indexing,
//! the evaluation, a self-play training game) are therefore written once,
//! generic over [`Kernels`] (how moves and flips are generated) and marked
//! `#[inline(always)]`, and [`crate::multiversion!`] instantiates each entry point in
//! functions compiled with the target features of each [`Variant`]. At run time
//! [`active`] picks the best variant the CPU supports (detected once), unless
//! the `TRAINSVC_ENGINE_CPU` environment variable or [`set_active`] names another.
//!
//! Every variant computes the same results: the floating-point operations are
//! the same ones in the same order (Rust never fuses or reorders them), only the
//! instructions that carry out the integer work differ.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::EngineError;

/// A compiled variant of the hot functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The platform's baseline: portable code, no feature beyond the target's defaults.
    Baseline,
    /// x86-64-v3: AVX2, BMI1/2, LZCNT, POPCNT, FMA; moves and flips four directions per AVX2 instruction.
    X86V3,
    /// x86-64-v4: v3 plus AVX-512 (F, BW, CD, DQ, VL).
    X86V4,
    /// aarch64 with NEON (Advanced SIMD), compiled for it explicitly.
    Neon,
}

/// Every variant, from the most portable to the most specialised.
pub const ALL: [Variant; 4] = [
    Variant::Baseline,
    Variant::X86V3,
    Variant::X86V4,
    Variant::Neon,
];

/// The name of the environment variable that overrides the detected variant.
pub const ENV_VAR: &str = "TRAINSVC_ENGINE_CPU";

impl Variant {
    /// The variant's name, as reported and as accepted by [`Variant::parse`].
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::X86V3 => "x86-64-v3",
            Variant::X86V4 => "x86-64-v4",
            Variant::Neon => "aarch64-neon",
        }
    }

    /// The variant named `name`.
    ///
    /// # Errors
    /// [`EngineError::InvalidConfig`] for an unknown name.
    pub fn parse(name: &str) -> Result<Variant, EngineError> {
        ALL.into_iter().find(|v| v.name() == name).ok_or_else(|| {
            EngineError::config(
                "cpu_variant",
                "'baseline', 'x86-64-v3', 'x86-64-v4' or 'aarch64-neon'",
                name,
            )
        })
    }

    /// Whether this CPU can run the variant.
    #[must_use]
    pub fn supported(self) -> bool {
        match self {
            Variant::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Variant::X86V3 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("bmi1")
                    && std::is_x86_feature_detected!("bmi2")
                    && std::is_x86_feature_detected!("lzcnt")
                    && std::is_x86_feature_detected!("popcnt")
                    && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Variant::X86V4 => {
                Variant::X86V3.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512cd")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Variant::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The variants this CPU can run, from the most portable to the best.
#[must_use]
pub fn supported() -> Vec<Variant> {
    ALL.into_iter().filter(|v| v.supported()).collect()
}

/// The best variant this CPU supports.
#[must_use]
pub fn best() -> Variant {
    supported().pop().unwrap_or(Variant::Baseline)
}

const UNSET: u8 = u8::MAX;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

fn index(v: Variant) -> u8 {
    ALL.iter().position(|&x| x == v).unwrap_or(0) as u8
}

/// The variant in use: the one set by [`set_active`], else the one named by
/// `TRAINSVC_ENGINE_CPU` when this CPU supports it, else [`best`].
#[inline]
#[must_use]
pub fn active() -> Variant {
    let i = ACTIVE.load(Ordering::Relaxed);
    if i != UNSET {
        return ALL[usize::from(i)];
    }
    let chosen = std::env::var(ENV_VAR)
        .ok()
        .and_then(|name| Variant::parse(name.trim()).ok())
        .filter(|v| v.supported())
        .unwrap_or_else(best);
    ACTIVE.store(index(chosen), Ordering::Relaxed);
    chosen
}

/// Makes `v` the variant in use from now on, for every thread (results do not
/// change: every variant computes the same ones; this is for tests and benchmarks).
///
/// # Errors
/// [`EngineError::InvalidConfig`] when this CPU cannot run `v`.
pub fn set_active(v: Variant) -> Result<(), EngineError> {
    if !v.supported() {
        let names: Vec<&str> = supported().iter().map(|v| v.name()).collect();
        return Err(EngineError::config(
            "cpu_variant",
            &format!("one this CPU supports: {}", names.join(", ")),
            v.name(),
        ));
    }
    ACTIVE.store(index(v), Ordering::Relaxed);
    Ok(())
}

/// How a variant generates moves and flips (the rest of the hot code is shared).
pub trait Kernels {
    /// Legal moves of `p` against `o` ([`crate::board::get_moves`]).
    fn moves(p: u64, o: u64) -> u64;
    /// Discs flipped by `p` playing `sq` against `o` ([`crate::board::get_flips`]).
    fn flips(p: u64, o: u64, sq: u32) -> u64;
}

/// The portable kernels (64-bit scalar Kogge-Stone fills).
pub struct Portable;

impl Kernels for Portable {
    #[inline(always)]
    fn moves(p: u64, o: u64) -> u64 {
        crate::board::get_moves(p, o)
    }
    #[inline(always)]
    fn flips(p: u64, o: u64, sq: u32) -> u64 {
        crate::board::get_flips(p, o, sq)
    }
}

/// AVX2 kernels: the four line directions in the four 64-bit lanes of one register.
///
/// Only instantiated inside functions compiled with AVX2 that run on a CPU
/// that has it (see [`crate::multiversion!`]), which makes the unsafe calls sound.
#[cfg(target_arch = "x86_64")]
pub struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Kernels for Avx2 {
    #[inline(always)]
    fn moves(p: u64, o: u64) -> u64 {
        // SAFETY: `Avx2` is only used in code that runs when AVX2 was detected.
        unsafe { x86::moves(p, o) }
    }
    #[inline(always)]
    fn flips(p: u64, o: u64, sq: u32) -> u64 {
        // SAFETY: as above.
        unsafe { x86::flips(p, o, sq) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_andnot_si256, _mm256_castsi256_si128, _mm256_cmpeq_epi64,
        _mm256_extracti128_si256, _mm256_or_si256, _mm256_set1_epi64x, _mm256_set_epi64x,
        _mm256_setzero_si256, _mm256_sllv_epi64, _mm256_srlv_epi64, _mm_cvtsi128_si64,
        _mm_or_si128, _mm_unpackhi_epi64,
    };

    /// Files b..g (see `board::NOT_EDGE_FILES`), as a lane value.
    const INNER: i64 = 0x7E7E_7E7E_7E7E_7E7E;

    /// The four directions' shifts (lanes: 1 = along a rank, 8 = a file, 9 and 7 the diagonals).
    #[inline(always)]
    unsafe fn shifts() -> (__m256i, __m256i, __m256i) {
        (
            _mm256_set_epi64x(7, 9, 8, 1),
            _mm256_set_epi64x(14, 18, 16, 2),
            // The opponent's discs that a line can run through: a file shift
            // never wraps, the others must stop at the a and h files.
            _mm256_set_epi64x(INNER, INNER, -1, INNER),
        )
    }

    #[inline(always)]
    unsafe fn or_lanes(v: __m256i) -> u64 {
        let x = _mm_or_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_cvtsi128_si64(_mm_or_si128(x, _mm_unpackhi_epi64(x, x))) as u64
    }

    /// The runs of opponent discs (`om`, edge-masked per lane) that start next
    /// to the discs of `from`, in the left and the right sense of each lane's
    /// direction: the same Kogge-Stone fills as `board::get_moves`, one
    /// direction per lane.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn runs(from: __m256i, om: __m256i) -> (__m256i, __m256i) {
        let (s, s2, _) = shifts();
        let mut fl = _mm256_and_si256(om, _mm256_sllv_epi64(from, s));
        let mut fr = _mm256_and_si256(om, _mm256_srlv_epi64(from, s));
        fl = _mm256_or_si256(fl, _mm256_and_si256(om, _mm256_sllv_epi64(fl, s)));
        fr = _mm256_or_si256(fr, _mm256_and_si256(om, _mm256_srlv_epi64(fr, s)));
        let ml = _mm256_and_si256(om, _mm256_sllv_epi64(om, s));
        let mr = _mm256_srlv_epi64(ml, s);
        fl = _mm256_or_si256(fl, _mm256_and_si256(ml, _mm256_sllv_epi64(fl, s2)));
        fr = _mm256_or_si256(fr, _mm256_and_si256(mr, _mm256_srlv_epi64(fr, s2)));
        fl = _mm256_or_si256(fl, _mm256_and_si256(ml, _mm256_sllv_epi64(fl, s2)));
        fr = _mm256_or_si256(fr, _mm256_and_si256(mr, _mm256_srlv_epi64(fr, s2)));
        (fl, fr)
    }

    /// `board::get_moves`: the squares just beyond the runs that start at the player's discs.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub unsafe fn moves(p: u64, o: u64) -> u64 {
        let (s, _, inner) = shifts();
        let pp = _mm256_set1_epi64x(p as i64);
        let om = _mm256_and_si256(_mm256_set1_epi64x(o as i64), inner);
        let (fl, fr) = runs(pp, om);
        let m = _mm256_or_si256(_mm256_sllv_epi64(fl, s), _mm256_srlv_epi64(fr, s));
        or_lanes(m) & !(p | o)
    }

    /// `board::get_flips`: the runs that start at the square, in each of the
    /// eight senses, kept where the run ends on one of the player's discs.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub unsafe fn flips(p: u64, o: u64, sq: u32) -> u64 {
        let (s, _, inner) = shifts();
        let pp = _mm256_set1_epi64x(p as i64);
        let x = _mm256_set1_epi64x((1u64 << sq) as i64);
        let om = _mm256_and_si256(_mm256_set1_epi64x(o as i64), inner);
        let (fl, fr) = runs(x, om);
        let zero = _mm256_setzero_si256();
        let open_l = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_sllv_epi64(fl, s), pp), zero);
        let open_r = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_srlv_epi64(fr, s), pp), zero);
        or_lanes(_mm256_or_si256(
            _mm256_andnot_si256(open_l, fl),
            _mm256_andnot_si256(open_r, fr),
        ))
    }
}

/// Defines a function that runs the generic `#[inline(always)]` function
/// `$imp::<K>` compiled for the active [`Variant`], and `$on`, the same for a
/// given variant (the baseline when this CPU cannot run it):
///
/// ```ignore
/// multiversion! {
///     /// Docs.
///     pub fn perft / perft_on (board: &Board, depth: u32) -> u64 = perft_impl;
/// }
/// ```
///
/// Everything `$imp` calls that matters for speed must be inlined into it
/// (`#[inline(always)]` on generic functions): a function that is not inlined
/// is compiled once, for the baseline.
#[macro_export]
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident / $on:ident ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $imp:ident;) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            $on($crate::isa::active(), $($arg),*)
        }

        #[doc = concat!("[`", stringify!($name), "`] compiled for `variant` (the baseline when this CPU lacks it).")]
        #[allow(unreachable_patterns, unused_unsafe)]
        $vis fn $on(variant: $crate::isa::Variant, $($arg: $ty),*) -> $ret {
            // One arm per variant: `$imp` with the variant's kernels, inside a
            // function compiled with the variant's target features.
            macro_rules! arm {
                ($features:literal, $kernels:ty) => {{
                    #[target_feature(enable = $features)]
                    unsafe fn compiled($($arg: $ty),*) -> $ret {
                        $imp::<$kernels>($($arg),*)
                    }
                    // SAFETY: the CPU supports the variant (checked by the match guard).
                    unsafe { compiled($($arg),*) }
                }};
            }
            match variant {
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Variant::X86V4 if variant.supported() => arm!(
                    "avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt",
                    $crate::isa::Avx2
                ),
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Variant::X86V3 if variant.supported() => {
                    arm!("avx2,fma,bmi1,bmi2,lzcnt,popcnt", $crate::isa::Avx2)
                }
                #[cfg(target_arch = "aarch64")]
                $crate::isa::Variant::Neon if variant.supported() => {
                    arm!("neon", $crate::isa::Portable)
                }
                _ => $imp::<$crate::isa::Portable>($($arg),*),
            }
        }
    };
}

#[inline(always)]
fn moves_impl<K: Kernels>(p: u64, o: u64) -> u64 {
    K::moves(p, o)
}

#[inline(always)]
fn flips_impl<K: Kernels>(p: u64, o: u64, sq: u32) -> u64 {
    K::flips(p, o, sq)
}

multiversion! {
    /// [`crate::board::get_moves`] through the active variant's kernels.
    pub fn moves / moves_on (p: u64, o: u64) -> u64 = moves_impl;
}

multiversion! {
    /// [`crate::board::get_flips`] through the active variant's kernels.
    pub fn flips / flips_on (p: u64, o: u64, sq: u32) -> u64 = flips_impl;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::{get_flips, get_moves, Board};
    use crate::rng::Rng;

    #[test]
    fn every_supported_variant_generates_the_portable_moves_and_flips() {
        let variants = supported();
        let mut checked = 0;
        for game in 0..300 {
            let mut rng = Rng::new(3, game);
            let mut b = Board::initial();
            while let Some((moves, _)) = b.next_turn() {
                for &v in &variants {
                    assert_eq!(moves_on(v, b.player, b.opponent), moves, "{v}");
                    // Every square, legal or not: flips of an illegal move are 0 in both.
                    for sq in 0..64 {
                        if (b.player | b.opponent) >> sq & 1 == 0 {
                            assert_eq!(
                                flips_on(v, b.player, b.opponent, sq),
                                get_flips(b.player, b.opponent, sq),
                                "{v} sq {sq}"
                            );
                        }
                    }
                    checked += 1;
                }
                b = b.play(rng.pick_bit(moves));
            }
            assert_eq!(get_moves(b.player, b.opponent), 0);
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn the_best_variant_runs_on_a_cpu_with_avx2() {
        // A wheel that fell back to the baseline on an AVX2 machine fails here.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::env::var(ENV_VAR).is_err() {
            assert_ne!(best(), Variant::Baseline);
            assert!(supported().contains(&Variant::X86V3));
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(best(), Variant::Neon);
        assert!(Variant::parse("x86-64-v9").is_err());
        for v in ALL {
            assert_eq!(Variant::parse(v.name()).unwrap(), v);
        }
    }
}
