//! Photo bytes → the backbone's input tensor.
//!
//! [`prepare`] runs once per request, so it is built to be cheap and to fail
//! cleanly on anything a client can upload:
//!
//! 1. the format is sniffed from the bytes (JPEG, PNG, WebP), never from a
//!    file name;
//! 2. the dimensions are read from the header and checked against
//!    [`ImageLimits::max_pixels`] *before* any pixel buffer is allocated, with
//!    the decoders' own allocation limits as a second guard;
//! 3. JPEGs are decoded at reduced size in the DCT domain, down to a shorter
//!    side of no less than 260 px (why: `decode::dct_scale_denominator`);
//! 4. the EXIF orientation is honoured, so the backbone sees the photo upright;
//! 5. the photo is resized with Pillow-compatible bicubic filtering to
//!    260×260 and normalised to `(x/255 − 0.498)/0.502`, NCHW float32;
//! 6. with [`prepare_measured`], the same decoded pixels are also measured
//!    ([`PhotoStats`]: size, sharpness, exposure, perceptual hash) for the
//!    listing analysis — about 1.4 ms a photo, which single calls skip.
//!
//! The reference is Pillow (`tools/reference_embeddings.py`), which is what
//! the heads were trained with; the tests measure agreement with it.

mod decode;
mod preprocess;
mod stats;
#[cfg(test)]
mod tests;

use ndarray::Array4;

pub use stats::{PhotoStats, WORKING_SIDE};

/// Caps applied before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height accepted, read from the header before decoding.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_pixels: 50_000_000,
        }
    }
}

/// How the photo becomes the square backbone input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    /// The whole photo resized to 260×260 (aspect not kept).
    Squash,
    /// Shorter side to 260, then the 260×260 centre.
    CentreCrop,
}

/// The preprocessing a heads file was trained with; inference must match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preprocessing {
    pub view: View,
    /// Also run the horizontally flipped view and average the embeddings.
    pub flip: bool,
}

/// One photo, ready for the backbone: `views` × 3 × 260 × 260, normalised,
/// and what its pixels measure when [`prepare_measured`] made it.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub tensor: Array4<f32>,
    pub stats: Option<PhotoStats>,
}

impl Prepared {
    /// The horizontally mirrored upright view, as `prepare` with `flip`
    /// makes its second view (both mirror the resized pixels, so they are
    /// the same numbers); no stats.
    pub fn mirrored(&self) -> Self {
        Self {
            tensor: self
                .tensor
                .slice(ndarray::s![0..1, .., .., ..;-1])
                .as_standard_layout()
                .into_owned(),
            stats: None,
        }
    }
}

/// Why a photo could not be prepared. Every variant is the client's fault
/// (the HTTP layer answers 400 for all of them); the text is a short reason
/// for logs.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a JPEG, PNG or WebP image")]
    UnsupportedFormat,
    #[error("image of {width}×{height} pixels exceeds the limit of {max_pixels} pixels")]
    TooManyPixels {
        width: u64,
        height: u64,
        max_pixels: u64,
    },
    #[error("image could not be decoded: {0}")]
    Decode(String),
}

/// Decodes `bytes` and turns them into the backbone's input views.
///
/// The first view is the upright photo; with `preprocessing.flip` a second,
/// horizontally mirrored view follows. Never panics on bad input: a decoder
/// panic (a bug in a dependency) is caught and reported as
/// [`ImageError::Decode`], because one hostile upload must not take down the
/// worker that serves everyone else.
pub fn prepare(
    bytes: &[u8],
    limits: &ImageLimits,
    preprocessing: &Preprocessing,
) -> Result<Prepared, ImageError> {
    prepare_with(bytes, limits, preprocessing, false)
}

/// [`prepare`], and the photo's [`PhotoStats`] from the same decode.
pub fn prepare_measured(
    bytes: &[u8],
    limits: &ImageLimits,
    preprocessing: &Preprocessing,
) -> Result<Prepared, ImageError> {
    prepare_with(bytes, limits, preprocessing, true)
}

fn prepare_with(
    bytes: &[u8],
    limits: &ImageLimits,
    preprocessing: &Preprocessing,
    measure: bool,
) -> Result<Prepared, ImageError> {
    let format = decode::sniff(bytes).ok_or(ImageError::UnsupportedFormat)?;
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode::decode(bytes, format, limits)
    }))
    .map_err(|_| ImageError::Decode("the decoder failed on malformed data".into()))??;
    let tensor = preprocess::to_tensor(&decoded, preprocessing)?;
    let stats = measure.then(|| stats::measure(&decoded)).transpose()?;
    Ok(Prepared { tensor, stats })
}
