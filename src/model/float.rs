//! Floats as a person wrote them: an f32 register's value as the shortest decimal that is that
//! f32 (66.6, not the 66.59999847412109 it widens to), and scaled values rid of the binary noise
//! the arithmetic adds (666 × 0.1 is 66.60000000000001 in f64).

/// `v` rounded to `digits` significant decimal digits: the f64 nearest that decimal (the one
/// a parser would give), or `v` itself where the power of ten is not exact in an f64.
fn significant(v: f64, digits: i32, magnitude: i32) -> f64 {
    // Digits past the decimal point (negative: zeros before it). 10^k is exact up to 22, and
    // with at most 17 digits the rounded mantissa is an exact integer: one rounding, at the
    // division or product, which IEEE makes correct.
    let k = digits - 1 - magnitude;
    match k {
        0..=22 => (v * 10f64.powi(k)).round() / 10f64.powi(k),
        -22..=-1 => (v / 10f64.powi(-k)).round() * 10f64.powi(-k),
        _ => v,
    }
}

fn magnitude(v: f64) -> i32 {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a decimal exponent, |e| < 400"
    )]
    let m = v.abs().log10().floor() as i32;
    m
}

/// The f64 of the shortest decimal that reads back as `g`: what a person typed into the device.
/// `short_f32(g) as f32 == g` for every finite `g`.
pub fn short_f32(g: f32) -> f64 {
    let v = f64::from(g);
    if g == 0.0 || !g.is_finite() {
        return v;
    }
    let m = magnitude(v);
    if !(-13..=21).contains(&m) {
        // Past what one exact power of ten can round (|g| above 1e21 or below 1e-13): Rust's
        // own shortest form, printed and read back (rare enough to allocate).
        return g.to_string().parse().unwrap_or(v);
    }
    // Nine significant digits always read back as the same f32.
    (1..=9)
        .map(|d| significant(v, d, m))
        .find(|r| *r as f32 == g)
        .unwrap_or(v)
}

/// A computed value (`raw * scale + offset`) to 15 significant digits, which an f64 holds
/// exactly as decimal — but only when that moves it by the few units in the last place the
/// arithmetic adds: a 19-digit counter keeps every digit the device gave.
pub fn tidy(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let r = significant(v, 15, magnitude(v));
    if (r - v).abs() <= 4.0 * f64::EPSILON * v.abs() {
        r
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_f32_reads_as_it_was_typed() {
        for (g, want) in [
            (66.6f32, 66.6),
            (0.1, 0.1),
            (123.456, 123.456),
            (-40.25, -40.25),
            (1e-7, 1e-7),
            (3.0e38, 3.0e38),
            (16_777_216.0, 16_777_216.0),
        ] {
            assert_eq!(short_f32(g), want, "{g}");
        }
        assert!(short_f32(f32::NAN).is_nan());
        assert_eq!(short_f32(f32::INFINITY), f64::INFINITY);
    }

    #[test]
    fn every_f32_reads_back_as_itself() {
        let mut bits = 0x1234_5678_u32;
        for _ in 0..200_000 {
            // xorshift: spread over every exponent and sign.
            bits ^= bits << 13;
            bits ^= bits >> 17;
            bits ^= bits << 5;
            let g = f32::from_bits(bits);
            if g.is_finite() {
                assert_eq!(short_f32(g) as f32, g, "{bits:#x}");
            }
        }
        for g in [f32::MAX, f32::MIN_POSITIVE, -f32::MAX, 1.0e-45] {
            assert_eq!(short_f32(g) as f32, g, "{g:e}");
        }
    }

    #[test]
    fn scaled_values_lose_the_arithmetic_noise_only() {
        assert_eq!(tidy(666.0 * 0.1), 66.6);
        assert_eq!(tidy(0.1 + 0.2), 0.3);
        assert_eq!(tidy(-1234.0 * 0.01), -12.34);
        assert_eq!(tidy(123_456_789_012.345), 123_456_789_012.345);
        assert_eq!(tidy(2.0_f64.powi(60)), 2.0_f64.powi(60));
    }
}
