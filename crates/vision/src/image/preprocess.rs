//! Stored pixels → upright, resized, normalised NCHW views.
//!
//! The order is resize first, orient second: the 260×260 target is square
//! and bicubic resampling is separable with the same kernel on both axes, so
//! rotating or mirroring the small result is the same as resizing the rotated
//! photo — and it costs nothing, because the orientation (and the flipped
//! view) is just the order in which the tensor reads the resized pixels.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use ndarray::Array4;

use super::decode::{Decoded, Layout, Orientation};
use super::{ImageError, Preprocessing, View};
use crate::backbone::INPUT_SIZE;

/// Side of the square backbone input, in pixels.
pub(super) const MIN_SIDE: u32 = INPUT_SIZE as u32;

/// The normalisation the backbone was trained with, `(x/255 − 0.498)/0.502`,
/// for every 8-bit value (computed in f32 like the NumPy reference).
fn normalisation_table() -> [f32; 256] {
    let mut table = [0f32; 256];
    for (value, slot) in table.iter_mut().enumerate() {
        *slot = (value as f32 / 255.0 - 0.498) / 0.502;
    }
    table
}

pub(super) fn to_tensor(
    decoded: &Decoded,
    preprocessing: &Preprocessing,
) -> Result<Array4<f32>, ImageError> {
    let resized = resize(decoded, preprocessing.view)?;
    let channels = match decoded.layout {
        Layout::Gray => 1,
        Layout::Rgb => 3,
    };
    let n = INPUT_SIZE;
    let views = if preprocessing.flip { 2 } else { 1 };
    let table = normalisation_table();
    let pixels = resized.buffer();

    let mut data = Vec::with_capacity(views * 3 * n * n);
    for flipped in [false, true].into_iter().take(views) {
        let walk = PixelWalk::new(decoded.orientation, flipped, n);
        for channel in 0..3 {
            // A gray photo repeats its one channel, as Pillow's convert('RGB').
            let offset = if channels == 1 { 0 } else { channel };
            for y in 0..n {
                let mut index = walk.row_start(y);
                for _ in 0..n {
                    // The walk stays inside the n×n image by construction.
                    let value = pixels[index as usize * channels + offset];
                    data.push(table[usize::from(value)]);
                    index += walk.step_x;
                }
            }
        }
    }
    Array4::from_shape_vec((views, 3, n, n), data)
        .map_err(|e| ImageError::Decode(format!("internal: tensor shape: {e}")))
}

/// Resizes the stored pixels to 260×260 with Pillow's BICUBIC.
///
/// Catmull-Rom is the cubic with a = −0.5 that Pillow calls BICUBIC, and
/// `fast_image_resize` uses Pillow's convolution scheme (support widened by
/// the scale factor when downsampling, i.e. antialiased), so results match
/// Pillow's `resize((260, 260), Image.BICUBIC)` to within rounding.
///
/// [`View::CentreCrop`] resizes the exact centred square of side
/// `min(width, height)`, with fractional edges where the difference is odd.
/// That is Pillow's `ImageOps.fit(im, (260, 260), Image.BICUBIC)` (which
/// passes the same fractional box to `resize`), and it is equivalent to
/// "shorter side to 260, then the centre 260×260" without the half-pixel
/// shift an integer crop offset would add. Because the square is centred, it
/// is the same region whatever the EXIF orientation.
fn resize(decoded: &Decoded, view: View) -> Result<Image<'static>, ImageError> {
    let pixel_type = match decoded.layout {
        Layout::Gray => PixelType::U8,
        Layout::Rgb => PixelType::U8x3,
    };
    let source = ImageRef::new(decoded.width, decoded.height, &decoded.pixels, pixel_type)
        .map_err(|e| ImageError::Decode(format!("internal: pixel buffer: {e}")))?;
    let mut options =
        ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    if view == View::CentreCrop {
        let (width, height) = (f64::from(decoded.width), f64::from(decoded.height));
        let side = width.min(height);
        options = options.crop((width - side) / 2.0, (height - side) / 2.0, side, side);
    }
    let mut resized = Image::new(MIN_SIDE, MIN_SIDE, pixel_type);
    Resizer::new()
        .resize(&source, &mut resized, &options)
        .map_err(|e| ImageError::Decode(format!("internal: resize: {e}")))?;
    Ok(resized)
}

/// Where output pixel (x, y) of the upright (optionally mirrored) view is
/// found in the resized, still stored-orientation n×n image.
///
/// Every EXIF orientation and the mirror are affine maps of the square, so
/// the source index is `origin + x·step_x + y·step_y`.
pub(super) struct PixelWalk {
    origin: isize,
    pub(super) step_x: isize,
    step_y: isize,
}

impl PixelWalk {
    pub(super) fn new(orientation: Orientation, flipped: bool, n: usize) -> Self {
        let last = n as isize - 1;
        let n = n as isize;
        // Stored (column, row) of the upright pixel (x, y); formulas follow
        // the EXIF definitions (= Pillow's ImageOps.exif_transpose).
        let source = |x: isize, y: isize| -> isize {
            let x = if flipped { last - x } else { x };
            let (column, row) = match orientation.exif_value() {
                2 => (last - x, y),
                3 => (last - x, last - y),
                4 => (x, last - y),
                5 => (y, x),
                6 => (y, last - x),
                7 => (last - y, last - x),
                8 => (last - y, x),
                _ => (x, y),
            };
            row * n + column
        };
        let origin = source(0, 0);
        Self {
            origin,
            step_x: source(1, 0) - origin,
            step_y: source(0, 1) - origin,
        }
    }

    pub(super) fn row_start(&self, y: usize) -> isize {
        self.origin + y as isize * self.step_y
    }
}
