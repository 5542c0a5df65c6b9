//! Vision: photo bytes → pixels → backbone embedding → per-stage probabilities.
//!
//! - [`image`]: decoding (with caps on bytes and pixels, EXIF orientation,
//!   DCT-domain downscaling) and preprocessing to the backbone's input tensor.
//! - [`backbone`]: the [`Backbone`] trait and its two engines, ONNX Runtime
//!   (default) and tract (pure Rust fallback).
//! - [`heads`]: the trained linear heads and their versioned file.
//! - [`train`]: softmax regression and temperature scaling for `photolabel train`.
//! - [`labeller`]: ties them together for one inference worker.
//! - [`random`]: the seeded generator behind augmentation and eval's chance
//!   calibration.

pub mod augment;
pub mod backbone;
pub mod heads;
pub mod image;
pub mod labeller;
pub mod random;
pub mod train;

pub use backbone::{
    cores, default_replicas, Backbone, BackboneModel, BackboneOutput, BackboneSource, EngineConfig,
    EngineError, EngineKind, Precision, EMBEDDING_DIM, INPUT_SIZE,
};
pub use heads::{Heads, HeadsError, SecondView, ViewsOutcome};
pub use image::{
    prepare, prepare_measured, ImageError, ImageLimits, PhotoStats, Prepared, Preprocessing, View,
};
pub use labeller::{Embedder, Labelled, Labeller, LabellerError, ModelConfig};
