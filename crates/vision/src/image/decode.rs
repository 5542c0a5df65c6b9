//! Bytes → pixels in stored orientation, plus the orientation to apply.
//!
//! JPEGs go through `jpeg-decoder` because it can decode at 1/2, 1/4 or 1/8
//! size in the DCT domain, which skips most of the inverse-DCT, upsampling and
//! colour-conversion work for big photos. PNG and WebP go through `image`.

use std::io::Cursor;

use ::image::codecs::png::PngDecoder;
use ::image::codecs::webp::WebPDecoder;
use ::image::metadata::Orientation as ImageOrientation;
use ::image::{DynamicImage, ImageDecoder};

use super::preprocess::MIN_SIDE;
use super::{ImageError, ImageLimits};

/// A format we decode, recognised by its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Jpeg,
    Png,
    WebP,
}

/// Recognises the format from the first bytes. Anything else (empty input,
/// text, HTML, GIF, …) is `None`.
pub(super) fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(Format::WebP)
    } else {
        None
    }
}

/// How decoded pixels are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// One byte per pixel. Kept as is (not expanded to RGB) because the
    /// resize then does a third of the work; the tensor repeats the channel.
    Gray,
    /// Three bytes per pixel, R G B.
    Rgb,
}

/// EXIF orientation (1–8): how the stored pixels must be transformed to be
/// displayed upright. Unknown or missing values mean 1 (as stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Orientation(u8);

impl Orientation {
    pub(super) const UPRIGHT: Self = Self(1);

    pub(super) fn from_exif(value: u32) -> Self {
        match value {
            1..=8 => Self(value as u8),
            _ => Self::UPRIGHT,
        }
    }

    pub(super) fn exif_value(self) -> u8 {
        self.0
    }

    /// Orientations 5–8 turn the photo by a quarter: width and height swap.
    pub(super) fn swaps_axes(self) -> bool {
        self.0 >= 5
    }

    fn from_image(orientation: ImageOrientation) -> Self {
        Self(match orientation {
            ImageOrientation::NoTransforms => 1,
            ImageOrientation::FlipHorizontal => 2,
            ImageOrientation::Rotate180 => 3,
            ImageOrientation::FlipVertical => 4,
            ImageOrientation::Rotate90FlipH => 5,
            ImageOrientation::Rotate90 => 6,
            ImageOrientation::Rotate270FlipH => 7,
            ImageOrientation::Rotate270 => 8,
        })
    }
}

/// Pixels as stored in the file (orientation not yet applied), possibly
/// already reduced by DCT scaling.
#[derive(Debug)]
pub(super) struct Decoded {
    pub width: u32,
    pub height: u32,
    /// The size stored in the file, before any DCT-domain reduction.
    pub full_width: u32,
    pub full_height: u32,
    pub layout: Layout,
    pub pixels: Vec<u8>,
    pub orientation: Orientation,
}

pub(super) fn decode(
    bytes: &[u8],
    format: Format,
    limits: &ImageLimits,
) -> Result<Decoded, ImageError> {
    match format {
        Format::Jpeg => decode_jpeg(bytes, limits),
        Format::Png => decode_png(bytes, limits),
        Format::WebP => decode_webp(bytes, limits),
    }
}

/// Refuses images above the pixel cap, and images without pixels.
fn check_pixels(width: u64, height: u64, limits: &ImageLimits) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::Decode(format!(
            "image has no pixels ({width}×{height})"
        )));
    }
    if width.saturating_mul(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

/// The most bytes a decoder may allocate: 8 bytes per allowed pixel (RGBA,
/// 16 bits per channel) plus room for metadata and row buffers. Only a second
/// guard: the header check in [`check_pixels`] runs first.
fn alloc_budget(limits: &ImageLimits) -> u64 {
    limits.max_pixels.saturating_mul(8).saturating_add(16 << 20)
}

/// The DCT-domain downscale (1, 2, 4 or 8) for a JPEG of this size: the
/// largest whose result still has a shorter side of at least 260 px.
///
/// Scaling in the DCT domain skips most of the inverse DCT, chroma
/// upsampling and colour conversion, and leaves the resize less to read; only
/// the entropy decoding still runs at full size. It pays off most on big
/// camera photos (measured: a 4000×2667 JPEG prepares in ~36 ms at 1/8,
/// where a full-size decode alone takes ~50 ms); at 1/2 it saves ~10–20 %.
/// But it is a cruder filter than bicubic, so it stops while the shorter side
/// is still ≥ 260 px: the final resize stays a true, antialiased downsample
/// and the result stays close to Pillow's full-size decode + BICUBIC, which
/// is what the heads were trained on.
pub(super) fn dct_scale_denominator(width: u16, height: u16) -> u16 {
    let shorter = width.min(height);
    [8u16, 4, 2]
        .into_iter()
        .find(|&d| shorter.div_ceil(d) as u32 >= MIN_SIDE)
        .unwrap_or(1)
}

fn jpeg_error(error: jpeg_decoder::Error) -> ImageError {
    ImageError::Decode(format!("JPEG: {error}"))
}

fn decode_jpeg(bytes: &[u8], limits: &ImageLimits) -> Result<Decoded, ImageError> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    // Reads markers up to the frame header only: no pixel buffers yet.
    decoder.read_info().map_err(jpeg_error)?;
    let info = decoder
        .info()
        .ok_or_else(|| ImageError::Decode("JPEG: no frame header".into()))?;
    check_pixels(info.width.into(), info.height.into(), limits)?;
    let full = (u32::from(info.width), u32::from(info.height));

    let denominator = dct_scale_denominator(info.width, info.height);
    if denominator > 1 {
        decoder
            .scale(
                info.width.div_ceil(denominator),
                info.height.div_ceil(denominator),
            )
            .map_err(jpeg_error)?;
    }
    decoder
        .set_max_decoding_buffer_size(usize::try_from(alloc_budget(limits)).unwrap_or(usize::MAX));
    let raw = decoder.decode().map_err(jpeg_error)?;
    // `info` now reports the (possibly scaled) output size.
    let info = decoder
        .info()
        .ok_or_else(|| ImageError::Decode("JPEG: no frame header".into()))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let pixel_count = width as usize * height as usize;

    let expect_len = |bytes_per_pixel: usize| {
        if raw.len() == pixel_count * bytes_per_pixel {
            Ok(())
        } else {
            Err(ImageError::Decode(
                "JPEG: decoder returned a short buffer".into(),
            ))
        }
    };
    let (layout, pixels) = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => {
            expect_len(1)?;
            (Layout::Gray, raw)
        }
        jpeg_decoder::PixelFormat::RGB24 => {
            expect_len(3)?;
            (Layout::Rgb, raw)
        }
        jpeg_decoder::PixelFormat::CMYK32 => {
            expect_len(4)?;
            (Layout::Rgb, cmyk_to_rgb(&raw))
        }
        jpeg_decoder::PixelFormat::L16 => {
            return Err(ImageError::Decode(
                "JPEG: 16-bit lossless JPEG is not supported".into(),
            ));
        }
    };

    let orientation = decoder
        .exif_data()
        .and_then(exif_orientation)
        .unwrap_or(Orientation::UPRIGHT);
    Ok(Decoded {
        width,
        height,
        full_width: full.0,
        full_height: full.1,
        layout,
        pixels,
        orientation,
    })
}

/// `jpeg-decoder` hands out CMYK as ink amounts (0 = no ink), having already
/// undone Adobe's inverted storage. This is the same naive conversion Pillow
/// uses (`R = (255 − C)(255 − K)/255`), so CMYK photos match the reference.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let white = 255 - u32::from(px[3]);
        for &ink in &px[..3] {
            let v = (255 - u32::from(ink)) * white;
            // Rounded division by 255.
            rgb.push(((v + 128 + ((v + 128) >> 8)) >> 8) as u8);
        }
    }
    rgb
}

/// Reads the orientation tag from a raw EXIF block (starting at the TIFF
/// header). Malformed EXIF is ignored rather than rejected: the photo itself
/// is fine, and browsers show such photos as stored.
fn exif_orientation(tiff: &[u8]) -> Option<Orientation> {
    let exif = exif::Reader::new().read_raw(tiff.to_vec()).ok()?;
    let field = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?;
    field.value.get_uint(0).map(Orientation::from_exif)
}

/// Width and height from the IHDR chunk, which the PNG specification requires
/// to come first at a fixed offset: reading them needs no decoder at all.
fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    let ihdr = bytes
        .get(8..24)
        .ok_or_else(|| ImageError::Decode("PNG: truncated header".into()))?;
    if &ihdr[4..8] != b"IHDR" {
        return Err(ImageError::Decode("PNG: first chunk is not IHDR".into()));
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Ok((be(&ihdr[8..12]), be(&ihdr[12..16])))
}

fn image_limits(limits: &ImageLimits) -> ::image::Limits {
    let mut image_limits = ::image::Limits::default();
    image_limits.max_alloc = Some(alloc_budget(limits));
    image_limits
}

fn image_error(format: &str, error: ::image::ImageError) -> ImageError {
    ImageError::Decode(format!("{format}: {error}"))
}

fn decode_png(bytes: &[u8], limits: &ImageLimits) -> Result<Decoded, ImageError> {
    let (width, height) = png_dimensions(bytes)?;
    check_pixels(width.into(), height.into(), limits)?;
    let decoder = PngDecoder::with_limits(Cursor::new(bytes), image_limits(limits))
        .map_err(|e| image_error("PNG", e))?;
    finish_image_decode("PNG", decoder, limits)
}

fn decode_webp(bytes: &[u8], limits: &ImageLimits) -> Result<Decoded, ImageError> {
    // The WebP decoder only parses chunk headers here; pixels come later.
    let mut decoder = WebPDecoder::new(Cursor::new(bytes)).map_err(|e| image_error("WebP", e))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width.into(), height.into(), limits)?;
    decoder
        .set_limits(image_limits(limits))
        .map_err(|e| image_error("WebP", e))?;
    finish_image_decode("WebP", decoder, limits)
}

/// Decodes with an `image` decoder whose dimensions have passed the cap.
fn finish_image_decode(
    format: &str,
    mut decoder: impl ImageDecoder,
    limits: &ImageLimits,
) -> Result<Decoded, ImageError> {
    let (width, height) = decoder.dimensions();
    check_pixels(width.into(), height.into(), limits)?;
    if decoder.total_bytes() > alloc_budget(limits) {
        return Err(ImageError::Decode(format!(
            "{format}: decoded size exceeds the memory limit"
        )));
    }
    // Bad metadata does not make the pixels unusable: treat it as upright.
    let orientation = decoder
        .orientation()
        .map(Orientation::from_image)
        .unwrap_or(Orientation::UPRIGHT);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(format, e))?;
    let (layout, pixels) = into_gray_or_rgb(image);
    Ok(Decoded {
        width,
        height,
        full_width: width,
        full_height: height,
        layout,
        pixels,
        orientation,
    })
}

/// Any `image` colour type → 8-bit gray or RGB.
///
/// Transparency is composited onto **white** rather than dropped (Pillow's
/// `convert('RGB')` drops it). Transparent PNGs here are mostly floor plans
/// and logos drawn on a transparent background whose hidden colour is often
/// black; dropping alpha would turn them into black squares. Opaque images,
/// which is every training photo, are unaffected by the choice.
fn into_gray_or_rgb(image: DynamicImage) -> (Layout, Vec<u8>) {
    let has_alpha = image.color().has_alpha();
    let has_color = image.color().has_color();
    match image {
        DynamicImage::ImageLuma8(buffer) => (Layout::Gray, buffer.into_raw()),
        DynamicImage::ImageRgb8(buffer) => (Layout::Rgb, buffer.into_raw()),
        image if has_alpha => (
            Layout::Rgb,
            composite_on_white(&image.into_rgba8().into_raw()),
        ),
        image if has_color => (Layout::Rgb, image.into_rgb8().into_raw()),
        image => (Layout::Gray, image.into_luma8().into_raw()),
    }
}

fn composite_on_white(rgba: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let alpha = u32::from(px[3]);
        for &c in &px[..3] {
            let v = u32::from(c) * alpha + 255 * (255 - alpha);
            rgb.push(((v + 128 + ((v + 128) >> 8)) >> 8) as u8);
        }
    }
    rgb
}
