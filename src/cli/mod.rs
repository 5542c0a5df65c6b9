//! The command line: one module per subcommand.

pub mod bench;
pub mod eval;
pub mod label;
pub mod listing;
pub mod queue;
pub mod train;

use std::path::PathBuf;

use clap::Args;
use photolabel_vision::{
    BackboneSource, EngineConfig, EngineKind, ImageLimits, Labeller, ModelConfig, SecondView,
};

/// Which model to load and how to run it (shared by every subcommand).
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Inference engine: `auto` (ONNX Runtime, or tract with a warning when
    /// its library cannot be loaded), `ort` or `tract`.
    #[arg(long, env = "PHOTOLABEL_ENGINE", default_value = "auto")]
    pub engine: EngineKind,
    /// Threads for one ONNX Runtime inference (0 = one per core; `serve` and
    /// `label` run a model replica per core, up to 4, and give each twice
    /// its share of the cores).
    #[arg(long, env = "PHOTOLABEL_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Backbone: `int8` or `fp32` (both built in), or an ONNX file. Default:
    /// int8 on ONNX Runtime (about twice the photos per core, labels within
    /// half a point of fp32's), fp32 on tract (which cannot run int8).
    #[arg(long, env = "PHOTOLABEL_BACKBONE")]
    pub backbone: Option<BackboneSource>,
    /// Heads file instead of the built-in heads of the loaded backbone (must
    /// be trained for it).
    #[arg(long, env = "PHOTOLABEL_HEADS")]
    pub heads: Option<PathBuf>,
    /// When to run the backbone a second time on the mirrored photo and
    /// average: `always`, `never`, or a probability P — only for photos
    /// whose least sure decision (image class, room, subclass or scene) is
    /// below P. Default: what the heads file says (`photolabel train`
    /// chooses it on its hold-out).
    #[arg(long, env = "PHOTOLABEL_SECOND_VIEW")]
    pub second_view: Option<SecondView>,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, next to the
    /// binary, or .cache/onnxruntime/ of the source tree).
    #[arg(long, env = "PHOTOLABEL_ONNXRUNTIME")]
    pub onnxruntime: Option<PathBuf>,
    /// Largest photo accepted, in pixels (width × height), checked before decoding.
    #[arg(long, env = "PHOTOLABEL_MAX_PIXELS", default_value_t = ImageLimits::default().max_pixels)]
    pub max_pixels: u64,
}

impl ModelArgs {
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            backbone: self.backbone.clone().unwrap_or_default(),
            heads: self.heads.clone(),
            second_view: self.second_view,
            engine: EngineConfig {
                kind: self.engine,
                threads: self.threads,
                onnxruntime: self.onnxruntime.clone(),
            },
        }
    }

    pub fn limits(&self) -> ImageLimits {
        ImageLimits {
            max_pixels: self.max_pixels,
        }
    }

    /// Replicas side by side, the layout `serve` picks: on a small machine
    /// they use the cores better than one replica on all of them.
    pub fn load_replicas(&self) -> anyhow::Result<Vec<Labeller>> {
        let replicas = photolabel_vision::default_replicas(photolabel_vision::cores());
        let labellers = Labeller::load_replicas(&self.config(), replicas)?;
        tracing::info!(
            engine = labellers[0].engine_name(),
            backbone = &labellers[0].backbone_sha256()[..16],
            replicas,
            "model loaded"
        );
        Ok(labellers)
    }

    pub fn load(&self) -> anyhow::Result<Labeller> {
        let labeller = Labeller::load(&self.config())?;
        tracing::info!(
            engine = labeller.engine_name(),
            backbone = &labeller.backbone_sha256()[..16],
            "model loaded"
        );
        Ok(labeller)
    }
}
