//! Measurements of the decoded pixels that the listing analysis needs: size,
//! sharpness, exposure and a perceptual hash.
//!
//! They come from the same decode as the backbone's tensor (a photo is
//! decoded once), at a fixed working scale so that the figures of a 4000 px
//! camera photo and of a 1024 px portal copy of it can be compared: the gray
//! image is reduced to a longer side of at most [`WORKING_SIDE`] pixels.

use std::borrow::Cow;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};

use super::decode::{Decoded, Layout};
use super::preprocess::PixelWalk;
use super::ImageError;

/// Longer side of the gray image sharpness and exposure are measured on.
/// JPEGs arrive DCT-reduced to a shorter side of 260–519 px, so this is a
/// downsample for every photo of portal size or more.
pub const WORKING_SIDE: u32 = 512;
/// Side of the gray square the perceptual hash is computed from.
const HASH_SIDE: usize = 32;
/// Share of each side left out of the hash: where banners, logos and
/// crops change a copy.
const HASH_MARGIN: f64 = 0.1;
/// The hash keeps the lowest 8×8 frequencies of that square.
const HASH_FREQUENCIES: usize = 8;
/// Luma at or below this (of 255) counts as a clipped shadow.
const SHADOW_LUMA: u8 = 8;
/// Luma at or above this (of 255) counts as a clipped highlight.
const HIGHLIGHT_LUMA: u8 = 247;
/// Below this variance of the half-scale Laplacian (8-bit units², rounding
/// noise removed) a photo has no detail to lose: its sharpness is reported
/// as 1.
const FLAT_VARIANCE: f64 = 1.0;
/// What rounding to 8 bits alone adds to the variance of the Laplacian
/// (uniform noise of variance 1/12 through the kernel's weights, whose
/// squares sum to 20), at the working scale and for the 2×2 means of half
/// scale (a quarter of the noise). On low-contrast photos (bare walls) this
/// floor kept a blurred photo's ratio above the `blurry` line; without it,
/// blur σ = 3 px was caught on 79 % of such views, with it on all.
const ROUNDING_NOISE: f64 = 20.0 / 12.0;
const HALF_ROUNDING_NOISE: f64 = ROUNDING_NOISE / 4.0;

/// What the pixels of one photo measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhotoStats {
    /// Upright width of the photo as stored in the file, in pixels.
    pub width: u32,
    /// Upright height, in pixels.
    pub height: u32,
    /// How much of the finest detail survives: the variance of the
    /// Laplacian at the working scale divided by that at half the working
    /// scale, each less what rounding to 8 bits alone contributes. Photos in focus measure about 0.3–0.8; a Gaussian blur of
    /// σ = 2 px on a 1024 px photo brings them under 0.2. A variance ratio
    /// rather than the raw variance, because the raw variance mostly
    /// measures how much texture the scene has (a white wall against a
    /// bookcase), not focus.
    pub sharpness: f32,
    /// Mean luma, 0 (black) to 1 (white).
    pub brightness: f32,
    /// Share of pixels with luma ≤ 8 of 255.
    pub shadows: f32,
    /// Share of pixels with luma ≥ 247 of 255.
    pub highlights: f32,
    /// A 64-bit perceptual hash (DCT hash of the centre 80 % of the upright
    /// photo squashed to 32×32): re-encoding, resizing, brightness changes
    /// and watermarks at the margins move it by few bits, a different photo
    /// by about half of them.
    pub hash: u64,
}

pub(super) fn measure(decoded: &Decoded) -> Result<PhotoStats, ImageError> {
    let gray = luma(decoded);
    let (width, height) = (decoded.width, decoded.height);
    // Never enlarged: upsampling would only smooth what is there.
    let scale = (f64::from(WORKING_SIDE) / f64::from(width.max(height))).min(1.0);
    let (ww, wh) = (
        ((f64::from(width) * scale).round() as u32).max(1),
        ((f64::from(height) * scale).round() as u32).max(1),
    );
    let working = if (ww, wh) == (width, height) {
        gray.into_owned()
    } else {
        resize_gray(&gray, (width, height), (ww, wh), 0.0)?
    };
    let (brightness, shadows, highlights) = exposure(&working);
    // From the working image, not the full decode: the 32×32 square only
    // needs low frequencies, and resizing from ≤ 512 px is a fraction of
    // the work.
    let small = resize_gray(
        &working,
        (ww, wh),
        (HASH_SIDE as u32, HASH_SIDE as u32),
        HASH_MARGIN,
    )?;
    let upright = orient_square(&small, decoded);
    let swapped = decoded.orientation.swaps_axes();
    let (full_w, full_h) = (decoded.full_width, decoded.full_height);
    Ok(PhotoStats {
        width: if swapped { full_h } else { full_w },
        height: if swapped { full_w } else { full_h },
        sharpness: sharpness(&working, ww as usize, wh as usize),
        brightness,
        shadows,
        highlights,
        hash: dct_hash(&upright),
    })
}

/// Rec. 601 luma, as Pillow's `convert('L')`; a gray photo as it is.
fn luma(decoded: &Decoded) -> Cow<'_, [u8]> {
    match decoded.layout {
        Layout::Gray => Cow::Borrowed(&decoded.pixels),
        Layout::Rgb => decoded
            .pixels
            .chunks_exact(3)
            .map(|p| {
                let y = 299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]);
                ((y + 500) / 1000) as u8
            })
            .collect::<Vec<u8>>()
            .into(),
    }
}

/// Resizes a gray image of `from` pixels to `to`, leaving out `margin` of
/// each side (0 for the whole image).
fn resize_gray(
    gray: &[u8],
    from: (u32, u32),
    to: (u32, u32),
    margin: f64,
) -> Result<Vec<u8>, ImageError> {
    let source = ImageRef::new(from.0, from.1, gray, PixelType::U8)
        .map_err(|e| ImageError::Decode(format!("internal: gray buffer: {e}")))?;
    let (w, h) = (f64::from(from.0), f64::from(from.1));
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .crop(
            w * margin,
            h * margin,
            w * (1.0 - 2.0 * margin),
            h * (1.0 - 2.0 * margin),
        );
    let mut resized = Image::new(to.0, to.1, PixelType::U8);
    Resizer::new()
        .resize(&source, &mut resized, &options)
        .map_err(|e| ImageError::Decode(format!("internal: resize: {e}")))?;
    Ok(resized.into_vec())
}

fn exposure(gray: &[u8]) -> (f32, f32, f32) {
    let n = gray.len().max(1) as f64;
    let (mut sum, mut dark, mut bright) = (0u64, 0usize, 0usize);
    for &v in gray {
        sum += u64::from(v);
        dark += usize::from(v <= SHADOW_LUMA);
        bright += usize::from(v >= HIGHLIGHT_LUMA);
    }
    (
        (sum as f64 / n / 255.0) as f32,
        (dark as f64 / n) as f32,
        (bright as f64 / n) as f32,
    )
}

/// Variance of the 4-neighbour Laplacian over the interior of a `w`×`h`
/// image, in the image's units squared; `None` when it has no interior.
/// Integer sums: exact, and several times faster than floats here.
fn laplacian_variance<T: Copy + Into<i64>>(pixels: &[T], w: usize, h: usize) -> Option<f64> {
    if w < 3 || h < 3 {
        return None;
    }
    let (mut sum, mut squares) = (0i64, 0i64);
    for y in 1..h - 1 {
        let (above, row, below) = (
            &pixels[(y - 1) * w..y * w],
            &pixels[y * w..(y + 1) * w],
            &pixels[(y + 1) * w..(y + 2) * w],
        );
        for x in 1..w - 1 {
            let l = row[x - 1].into() + row[x + 1].into() + above[x].into() + below[x].into()
                - 4 * row[x].into();
            sum += l;
            squares += l * l;
        }
    }
    let n = ((w - 2) * (h - 2)) as f64;
    let mean = sum as f64 / n;
    Some(squares as f64 / n - mean * mean)
}

fn sharpness(gray: &[u8], w: usize, h: usize) -> f32 {
    // Half scale by 2×2 sums (means × 4, so its variance is 16× that of
    // the means): the same scene with its finest octave gone.
    let (hw, hh) = (w / 2, h / 2);
    let mut half: Vec<u16> = Vec::with_capacity(hw * hh);
    for y in 0..hh {
        let (top, bottom) = (&gray[2 * y * w..], &gray[(2 * y + 1) * w..]);
        for x in 0..hw {
            half.push(
                u16::from(top[2 * x])
                    + u16::from(top[2 * x + 1])
                    + u16::from(bottom[2 * x])
                    + u16::from(bottom[2 * x + 1]),
            );
        }
    }
    match (
        laplacian_variance(gray, w, h).map(|v| (v - ROUNDING_NOISE).max(0.0)),
        laplacian_variance(&half, hw, hh).map(|v| v / 16.0 - HALF_ROUNDING_NOISE),
    ) {
        (Some(fine), Some(coarse)) if coarse >= FLAT_VARIANCE => (fine / coarse) as f32,
        _ => 1.0,
    }
}

/// The `HASH_SIDE`² square read upright (EXIF orientation applied).
fn orient_square(square: &[u8], decoded: &Decoded) -> Vec<f64> {
    let walk = PixelWalk::new(decoded.orientation, false, HASH_SIDE);
    let mut upright = Vec::with_capacity(square.len());
    for y in 0..HASH_SIDE {
        let mut index = walk.row_start(y);
        for _ in 0..HASH_SIDE {
            upright.push(f64::from(square[index as usize]));
            index += walk.step_x;
        }
    }
    upright
}

/// The DCT ("pHash") hash: the 8×8 lowest frequencies of the 32×32 DCT-II,
/// one bit per frequency, set where the coefficient is above the median of
/// the 63 non-constant ones.
fn dct_hash(square: &[f64]) -> u64 {
    let n = HASH_SIDE;
    let k = HASH_FREQUENCIES;
    let basis: Vec<f64> = (0..k)
        .flat_map(|u| {
            (0..n).map(move |x| {
                (std::f64::consts::PI * (2 * x + 1) as f64 * u as f64 / (2 * n) as f64).cos()
            })
        })
        .collect();
    // Rows first (k × n), then columns (k × k).
    let mut rows = vec![0f64; n * k];
    for y in 0..n {
        for u in 0..k {
            rows[y * k + u] = (0..n).map(|x| square[y * n + x] * basis[u * n + x]).sum();
        }
    }
    let mut coefficients = vec![0f64; k * k];
    for v in 0..k {
        for u in 0..k {
            coefficients[v * k + u] = (0..n).map(|y| rows[y * k + u] * basis[v * n + y]).sum();
        }
    }
    let mut ac: Vec<f64> = coefficients[1..].to_vec();
    ac.sort_by(f64::total_cmp);
    let median = (ac[ac.len() / 2 - 1] + ac[ac.len() / 2]) / 2.0;
    coefficients
        .iter()
        .enumerate()
        .skip(1)
        .fold(
            0u64,
            |hash, (bit, &c)| {
                if c > median {
                    hash | (1 << bit)
                } else {
                    hash
                }
            },
        )
}
