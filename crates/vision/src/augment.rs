//! Training-time augmentation: photo bytes → a randomly degraded copy that
//! looks more like what portals send (phone photos re-encoded many times,
//! agency watermarks, crops, tilted shots, grayscale scans, small uploads).
//!
//! Only `photolabel train` uses it. The result is encoded as a JPEG (the
//! re-encoding is itself one of the degradations), so an augmented photo
//! then goes through exactly the same [`crate::prepare`] as a labelled one.
//! Everything is driven by a seed, so a training run is reproducible.

use std::io::Cursor;

use ::image::codecs::jpeg::JpegEncoder;
use ::image::imageops::FilterType;
use ::image::{DynamicImage, ImageReader, Limits, Rgb, RgbImage};

use crate::image::{ImageError, ImageLimits};
use crate::random::Rng;

/// Longest side the augmentation works at: training photos are at most a
/// few hundred pixels, and the backbone sees 260×260.
const WORKING_SIDE: u32 = 640;

fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, ImageError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(4));
    reader.limits(decoder_limits);
    reader
        .decode()
        .map_err(|e| ImageError::Decode(e.to_string()))
}

fn encode_jpeg(photo: &DynamicImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(photo)
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(out)
}

/// One augmented copy of the photo in `bytes`, as JPEG bytes. `seed` picks
/// the degradations; the same bytes and seed give the same output.
pub fn augment(bytes: &[u8], seed: u64, limits: &ImageLimits) -> Result<Vec<u8>, ImageError> {
    let mut rng = Rng::new(seed);
    let mut rgb = shrink(decode(bytes, limits)?, WORKING_SIDE).to_rgb8();

    if rng.chance(0.5) {
        ::image::imageops::flip_horizontal_in_place(&mut rgb);
    }
    rgb = random_crop(&rgb, &mut rng);
    if rng.chance(0.3) {
        rgb = rotate_and_fill(&rgb, rng.range(-5.0, 5.0).to_radians());
    }
    if rng.chance(0.8) {
        jitter_colour(&mut rgb, &mut rng);
    }
    if rng.chance(0.5) {
        watermark(&mut rgb, &mut rng);
    }
    if rng.chance(0.2) {
        rgb = DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb).to_luma8()).to_rgb8();
    }
    if rng.chance(0.4) {
        let side = rng.range(128.0, 320.0) as u32;
        rgb = shrink(DynamicImage::ImageRgb8(rgb), side).to_rgb8();
    }
    let quality = 35 + rng.below(56) as u8;
    encode_jpeg(&DynamicImage::ImageRgb8(rgb), quality)
}

/// Resized so the longer side is at most `side` (never enlarged).
fn shrink(photo: DynamicImage, side: u32) -> DynamicImage {
    if photo.width().max(photo.height()) <= side {
        photo
    } else {
        photo.resize(side, side, FilterType::Triangle)
    }
}

/// Keeps 75–100 % of each side, anywhere in the photo.
fn random_crop(photo: &RgbImage, rng: &mut Rng) -> RgbImage {
    let (w, h) = photo.dimensions();
    let cw = ((w as f32 * rng.range(0.75, 1.0)) as u32).clamp(1, w);
    let ch = ((h as f32 * rng.range(0.75, 1.0)) as u32).clamp(1, h);
    let x = rng.below(w - cw + 1);
    let y = rng.below(h - ch + 1);
    ::image::imageops::crop_imm(photo, x, y, cw, ch).to_image()
}

/// Rotates by `angle` about the centre, zoomed in just enough that no
/// corner outside the photo shows (a tilted phone shot, not a black wedge).
fn rotate_and_fill(photo: &RgbImage, angle: f32) -> RgbImage {
    let (w, h) = photo.dimensions();
    let (wf, hf) = (w as f32, h as f32);
    let (sin, cos) = angle.sin_cos();
    let zoom = cos.abs() + sin.abs() * (wf / hf).max(hf / wf);
    let (cx, cy) = (wf / 2.0, hf / 2.0);
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = ((x as f32 + 0.5 - cx) / zoom, (y as f32 + 0.5 - cy) / zoom);
        let sx = cos * dx - sin * dy + cx - 0.5;
        let sy = sin * dx + cos * dy + cy - 0.5;
        bilinear(photo, sx, sy)
    })
}

fn bilinear(photo: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = photo.dimensions();
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let mut out = [0u8; 3];
    for (c, slot) in out.iter_mut().enumerate() {
        let p = |x, y| f32::from(photo.get_pixel(x, y)[c]);
        let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
        let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
        *slot = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
    }
    Rgb(out)
}

/// Brightness, contrast and saturation, each scaled by up to about ±25 %.
fn jitter_colour(photo: &mut RgbImage, rng: &mut Rng) {
    let brightness = rng.range(0.75, 1.25);
    let contrast = rng.range(0.75, 1.25);
    let saturation = rng.range(0.6, 1.3);
    let mean = {
        let total: f64 = photo.pixels().map(|p| f64::from(luma(p))).sum();
        (total / f64::from((photo.width() * photo.height()).max(1))) as f32
    };
    for pixel in photo.pixels_mut() {
        let grey = luma(pixel);
        for c in 0..3 {
            let v = f32::from(pixel[c]);
            let v = grey + (v - grey) * saturation;
            let v = mean + (v - mean) * contrast;
            pixel[c] = (v * brightness).round().clamp(0.0, 255.0) as u8;
        }
    }
}

fn luma(p: &Rgb<u8>) -> f32 {
    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
}

/// A semi-transparent line of blocky "text" — an agency name or a portal's
/// watermark — in the centre or a corner, sometimes on a solid banner.
/// The glyphs are random 3×5 bitmaps: the backbone needs to learn to look
/// past overlaid strokes, not to read them.
fn watermark(photo: &mut RgbImage, rng: &mut Rng) {
    let (w, h) = photo.dimensions();
    let cell = ((h as f32 * rng.range(0.012, 0.03)) as u32).max(1);
    let glyphs = 4 + rng.below(12);
    let text_w = glyphs * 4 * cell;
    let text_h = 5 * cell;
    if text_w + 2 * cell >= w || text_h + 2 * cell >= h {
        return;
    }
    let centred = rng.chance(0.5);
    let (x0, y0) = if centred {
        ((w - text_w) / 2, (h - text_h) / 2)
    } else {
        let margin = 2 * cell;
        let x = if rng.chance(0.5) {
            margin
        } else {
            w - text_w - margin
        };
        let y = if rng.chance(0.5) {
            margin
        } else {
            h - text_h - margin
        };
        (x, y)
    };
    let white = rng.chance(0.7);
    let ink = if white { 255.0 } else { 0.0 };
    let alpha = rng.range(0.3, 0.7);
    if !centred && rng.chance(0.3) {
        // A banner behind the text, in the opposite colour.
        let paper = 255.0 - ink;
        blend_rect(
            photo,
            x0 - cell,
            y0 - cell,
            text_w + 2 * cell,
            text_h + 2 * cell,
            paper,
            0.8,
        );
    }
    for g in 0..glyphs {
        let bits = rng.next_u64();
        for row in 0..5 {
            for col in 0..3 {
                if bits >> (row * 3 + col) & 1 == 1 {
                    let x = x0 + (g * 4 + col) * cell;
                    let y = y0 + row * cell;
                    blend_rect(photo, x, y, cell, cell, ink, alpha);
                }
            }
        }
    }
}

fn blend_rect(photo: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, value: f32, alpha: f32) {
    let (pw, ph) = photo.dimensions();
    for yy in y..(y + h).min(ph) {
        for xx in x..(x + w).min(pw) {
            let pixel = photo.get_pixel_mut(xx, yy);
            for c in 0..3 {
                let v = f32::from(pixel[c]) * (1.0 - alpha) + value * alpha;
                pixel[c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo_bytes() -> Vec<u8> {
        let photo = RgbImage::from_fn(300, 200, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&photo)
            .unwrap();
        out
    }

    #[test]
    fn same_seed_same_copy_other_seed_other_copy() {
        let bytes = photo_bytes();
        let limits = ImageLimits::default();
        let a = augment(&bytes, 7, &limits).unwrap();
        assert_eq!(a, augment(&bytes, 7, &limits).unwrap());
        let others: Vec<_> = (0..8)
            .map(|s| augment(&bytes, s, &limits).unwrap())
            .collect();
        assert!(others.iter().filter(|o| **o != a).count() >= 7);
        // Every copy is a photo that labelling can read.
        for copy in others {
            let prepared = crate::prepare(
                &copy,
                &limits,
                &crate::Preprocessing {
                    view: crate::View::Squash,
                    flip: false,
                },
            )
            .unwrap();
            assert_eq!(prepared.tensor.shape(), &[1, 3, 260, 260]);
        }
    }

    #[test]
    fn refuses_what_is_not_a_photo() {
        assert!(augment(b"not an image", 1, &ImageLimits::default()).is_err());
    }

    #[test]
    fn rotation_keeps_the_corners_inside_the_photo() {
        // A uniform photo stays uniform: no black wedges come in at the corners.
        let photo = RgbImage::from_pixel(120, 80, Rgb([200, 100, 50]));
        let rotated = rotate_and_fill(&photo, 5f32.to_radians());
        assert!(rotated.pixels().all(|p| *p == Rgb([200, 100, 50])));
    }
}
