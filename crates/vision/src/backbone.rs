//! The backbone (EfficientNet-Lite2, ImageNet) and the two engines that run it.
//!
//! ONNX Runtime is the default because it is about four times faster than
//! tract on this model; tract is pure Rust and always available, so the
//! service still works where the ONNX Runtime library cannot be loaded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, ArrayView4};
use sha2::{Digest, Sha256};

/// Side of the square input the backbone was exported for.
pub const INPUT_SIZE: usize = 260;
/// Width of the embedding the heads are trained on (the backbone's
/// `embedding` output): the last layer's pooled features
/// ([`POOLED_DIM`]), then the pooled inputs of blocks 14 (120) and 20 (208),
/// the mid-level context `tools/add_context_features.py` adds to the graph
/// (issue 11: it lowered every head's hold-out NLL, from the same pass).
pub const EMBEDDING_DIM: usize = 1608;
/// The leading part of the embedding: the last layer's 1280 pooled
/// features, which the ImageNet `logits` are computed from and which the
/// listing's duplicate search compares (its thresholds were set on them).
pub const POOLED_DIM: usize = 1280;
/// Width of the ImageNet classifier output.
pub const IMAGENET_CLASSES: usize = 1000;

/// The backbones compiled into the binary, so `photolabel` runs from a
/// fresh clone without any model download. Provenance: `models/README.md`.
static EMBEDDED_FP32: &[u8] = include_bytes!("../../../models/efficientnet-lite2.onnx");
static EMBEDDED_INT8: &[u8] = include_bytes!("../../../models/efficientnet-lite2-int8.onnx");

/// The two built-in backbones: the same network, the int8 one statically
/// quantised from the fp32 one (`tools/quantize_backbone.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// The default on ONNX Runtime: about twice the photos per core, and
    /// labels within issue 16's accuracy rule of the fp32 model's
    /// (BENCHMARKS.md, MODEL_CARD.md).
    Int8,
    /// What tract runs (it cannot run the quantised graph), and what the
    /// golden embeddings of the Python reference are computed with.
    Fp32,
}

impl Precision {
    fn bytes(self) -> &'static [u8] {
        match self {
            Self::Int8 => EMBEDDED_INT8,
            Self::Fp32 => EMBEDDED_FP32,
        }
    }
}

/// Which backbone to load: `--backbone int8|fp32|FILE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BackboneSource {
    /// The built-in one that suits the engine: int8 on ONNX Runtime, fp32
    /// on tract.
    #[default]
    Default,
    Embedded(Precision),
    File(PathBuf),
}

impl std::str::FromStr for BackboneSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("expected int8, fp32 or the path of an ONNX file".into()),
            "int8" => Ok(Self::Embedded(Precision::Int8)),
            "fp32" => Ok(Self::Embedded(Precision::Fp32)),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// Where `scripts/setup-onnxruntime.sh` puts the pinned ONNX Runtime library.
const DEV_ONNXRUNTIME: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../.cache/onnxruntime/libonnxruntime.so"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// ONNX Runtime if its library loads, otherwise tract (with a warning).
    #[default]
    Auto,
    Ort,
    Tract,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "ort" | "onnxruntime" => Ok(Self::Ort),
            "tract" => Ok(Self::Tract),
            other => Err(format!(
                "unknown engine {other:?} (expected auto, ort or tract)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("ONNX Runtime could not be loaded: {0}")]
    OrtUnavailable(String),
    #[error("the backbone model could not be loaded: {0}")]
    Load(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("input must be [N, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {0:?}")]
    BadInput(Vec<usize>),
}

/// What the backbone says about a batch: one row per photo.
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    /// `[N, EMBEDDING_DIM]`: the features the heads use.
    pub embedding: Array2<f32>,
    /// `[N, 1000]`: ImageNet logits.
    pub logits: Array2<f32>,
}

/// An engine running the backbone. `Send` so it can move into the one
/// inference thread; never shared.
pub trait Backbone: Send {
    fn name(&self) -> &'static str;
    fn infer(&mut self, input: ArrayView4<'_, f32>) -> Result<BackboneOutput, EngineError>;
}

/// How to build an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    pub kind: EngineKind,
    /// Intra-op threads for ONNX Runtime; 0 = one per core.
    pub threads: usize,
    /// The ONNX Runtime shared library; `None` = search the usual places.
    pub onnxruntime: Option<PathBuf>,
}

impl EngineConfig {
    /// The configuration for one of `replicas` copies of the model running
    /// side by side: unless the threads were set explicitly, each gets
    /// twice its share of the cores (at most all of them). Idle ONNX Runtime
    /// threads sleep rather than spin, so a lone photo gets more than one
    /// replica's share while under load the replicas split the cores.
    pub fn for_replicas(&self, replicas: usize) -> Self {
        let mut config = self.clone();
        if config.threads == 0 {
            let cores = cores();
            config.threads = (2 * cores / replicas.max(1)).clamp(1, cores);
        }
        config
    }
}

/// How many replicas of the model to run side by side on `cores` cores
/// unless told otherwise: one per core, at most 4. Two single-photo
/// inferences in parallel use two cores better than one inference split
/// over both (BENCHMARKS.md); beyond 4, each replica's own threads do.
pub fn default_replicas(cores: usize) -> usize {
    cores.clamp(1, 4)
}

/// The cores this process may use (1 if that cannot be known).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The model bytes and their identity.
#[derive(Debug, Clone)]
pub struct BackboneModel {
    pub bytes: std::borrow::Cow<'static, [u8]>,
    pub sha256: String,
}

impl BackboneModel {
    pub fn embedded(precision: Precision) -> Self {
        Self::from_bytes(std::borrow::Cow::Borrowed(precision.bytes()))
    }

    /// The backbone `source` names, for an engine `kind` that
    /// [`resolve_engine`] has settled (`Ort` or `Tract`).
    pub fn load(source: &BackboneSource, kind: EngineKind) -> Result<Self, EngineError> {
        let tract = kind == EngineKind::Tract;
        let precision = match source {
            BackboneSource::File(path) => return Self::from_file(path),
            BackboneSource::Embedded(precision) => *precision,
            BackboneSource::Default if tract => Precision::Fp32,
            BackboneSource::Default => Precision::Int8,
        };
        if tract && precision == Precision::Int8 {
            return Err(EngineError::Load(
                "tract cannot run the int8 backbone (a quantised graph); \
                 use --backbone fp32 or --engine ort"
                    .into(),
            ));
        }
        Ok(Self::embedded(precision))
    }

    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        Ok(Self::from_bytes(std::borrow::Cow::Owned(bytes)))
    }

    fn from_bytes(bytes: std::borrow::Cow<'static, [u8]>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Self { bytes, sha256 }
    }
}

/// Settles `Auto` into the engine that will run: ONNX Runtime if its
/// library loads, otherwise tract (with a warning). Done before the model
/// is chosen, because the default backbone depends on the engine.
pub fn resolve_engine(config: &EngineConfig) -> Result<EngineKind, EngineError> {
    match config.kind {
        EngineKind::Auto => match onnxruntime_environment(config.onnxruntime.as_deref()) {
            Ok(_) => Ok(EngineKind::Ort),
            Err(EngineError::OrtUnavailable(reason)) => {
                tracing::warn!(
                    %reason,
                    "ONNX Runtime is not available; using the slower pure-Rust tract engine"
                );
                Ok(EngineKind::Tract)
            }
            Err(other) => Err(other),
        },
        kind => Ok(kind),
    }
}

/// Builds the configured engine, falling back from ONNX Runtime to tract in
/// `Auto` mode.
pub fn load_backbone(
    model: &BackboneModel,
    config: &EngineConfig,
) -> Result<Box<dyn Backbone>, EngineError> {
    let mut backbone: Box<dyn Backbone> = match resolve_engine(config)? {
        EngineKind::Tract => Box::new(TractBackbone::new(&model.bytes)?),
        EngineKind::Ort | EngineKind::Auto => Box::new(OrtBackbone::new(&model.bytes, config)?),
    };
    check_output_widths(backbone.as_mut())?;
    Ok(backbone)
}

/// Runs one blank photo so that a `--backbone FILE` of another layout (an
/// export without the mid-level context, another network) is refused at
/// load with a reason, not on every photo afterwards.
fn check_output_widths(backbone: &mut dyn Backbone) -> Result<(), EngineError> {
    let blank = ndarray::Array4::<f32>::zeros((1, 3, INPUT_SIZE, INPUT_SIZE));
    backbone.infer(blank.view()).map(drop).map_err(|e| {
        EngineError::Load(format!(
            "the backbone does not have photolabel's outputs (`embedding` [N, {EMBEDDING_DIM}], \
             `logits` [N, {IMAGENET_CLASSES}]): {e}; an EfficientNet-Lite2 export gets the \
             embedding's mid-level context from tools/add_context_features.py"
        ))
    })
}

fn check_input(input: &ArrayView4<'_, f32>) -> Result<(), EngineError> {
    let shape = input.shape();
    if shape[1] != 3 || shape[2] != INPUT_SIZE || shape[3] != INPUT_SIZE || shape[0] == 0 {
        return Err(EngineError::BadInput(shape.to_vec()));
    }
    Ok(())
}

/// Candidate locations of the ONNX Runtime library, most specific first.
fn onnxruntime_candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = configured {
        return vec![path.to_path_buf()];
    }
    let mut candidates = Vec::new();
    for var in ["PHOTOLABEL_ONNXRUNTIME", "ORT_DYLIB_PATH"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(value));
        }
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("libonnxruntime.so"));
    }
    candidates.push(PathBuf::from(DEV_ONNXRUNTIME));
    candidates
}

/// Loads the ONNX Runtime library and creates its environment once per
/// process; later calls return the first outcome (the library cannot be
/// swapped once loaded).
fn onnxruntime_environment(
    configured: Option<&Path>,
) -> Result<&'static ort::environment::Environment, EngineError> {
    static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let mut tried = Vec::new();
            for path in onnxruntime_candidates(configured) {
                if !path.exists() {
                    tried.push(format!("{} (missing)", path.display()));
                    continue;
                }
                match ort::init_from(&path) {
                    Ok(builder) => {
                        return builder
                            .with_name("photolabel")
                            .with_telemetry(false)
                            .build()
                            .inspect(|_| tracing::info!(library = %path.display(), "ONNX Runtime loaded"))
                            .map_err(|e| e.to_string());
                    }
                    Err(e) => tried.push(format!("{}: {e}", path.display())),
                }
            }
            Err(format!("tried {}", tried.join("; ")))
        })
        .as_ref()
        .map_err(|reason| EngineError::OrtUnavailable(reason.clone()))
}

/// ONNX Runtime through `ort`, library loaded at run time.
pub struct OrtBackbone {
    session: ort::session::Session,
}

impl OrtBackbone {
    pub fn new(model: &[u8], config: &EngineConfig) -> Result<Self, EngineError> {
        let environment = onnxruntime_environment(config.onnxruntime.as_deref())?;
        let load = |e: ort::Error| EngineError::Load(e.to_string());
        let threads = if config.threads == 0 {
            cores()
        } else {
            config.threads
        };
        let session = ort::session::Session::builder(environment)
            .map_err(load)?
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.into()))?
            .with_intra_threads(threads)
            .map_err(|e| load(e.into()))?
            // Spinning threads burn the cores that decoding needs between
            // inferences on a small machine.
            .with_intra_op_spinning(false)
            .map_err(|e| load(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| load(e.into()))?
            .commit_from_memory(model)
            .map_err(load)?;
        Ok(Self { session })
    }
}

impl Backbone for OrtBackbone {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn infer(&mut self, input: ArrayView4<'_, f32>) -> Result<BackboneOutput, EngineError> {
        check_input(&input)?;
        let failed = |e: ort::Error| EngineError::Inference(e.to_string());
        let input = input.as_standard_layout();
        let tensor = ort::value::TensorRef::from_array_view(input.view()).map_err(failed)?;
        let outputs = self
            .session
            .run(ort::inputs!["input" => tensor])
            .map_err(failed)?;
        let extract = |name: &str, width: usize| -> Result<Array2<f32>, EngineError> {
            let view = outputs[name].try_extract_array::<f32>().map_err(failed)?;
            view.to_owned()
                .into_shape_with_order((input.shape()[0], width))
                .map_err(|e| EngineError::Inference(format!("{name}: {e}")))
        };
        Ok(BackboneOutput {
            embedding: extract("embedding", EMBEDDING_DIM)?,
            logits: extract("logits", IMAGENET_CLASSES)?,
        })
    }
}

type TractPlan = std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>;

/// tract: pure Rust, one thread per inference. Optimised for batch 1; a
/// batch is run photo by photo.
pub struct TractBackbone {
    plan: TractPlan,
}

impl TractBackbone {
    pub fn new(model: &[u8]) -> Result<Self, EngineError> {
        use tract_onnx::prelude::*;
        let load = |e: TractError| EngineError::Load(e.to_string());
        let plan = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(model))
            .map_err(load)?
            .with_input_fact(0, f32::fact([1, 3, INPUT_SIZE, INPUT_SIZE]).into())
            .map_err(load)?
            .into_optimized()
            .map_err(load)?
            .into_runnable()
            .map_err(load)?;
        Ok(Self { plan })
    }
}

impl Backbone for TractBackbone {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn infer(&mut self, input: ArrayView4<'_, f32>) -> Result<BackboneOutput, EngineError> {
        use tract_onnx::prelude::*;
        check_input(&input)?;
        let batch = input.shape()[0];
        let mut embedding = Array2::<f32>::zeros((batch, EMBEDDING_DIM));
        let mut logits = Array2::<f32>::zeros((batch, IMAGENET_CLASSES));
        let failed = |e: TractError| EngineError::Inference(e.to_string());
        for (i, photo) in input.outer_iter().enumerate() {
            let photo = photo.as_standard_layout();
            let data = photo
                .as_slice()
                .ok_or_else(|| EngineError::BadInput(photo.shape().to_vec()))?;
            let tensor =
                Tensor::from_shape(&[1, 3, INPUT_SIZE, INPUT_SIZE], data).map_err(failed)?;
            let outputs = self.plan.run(tvec!(tensor.into())).map_err(failed)?;
            for (out, row) in [
                (&outputs[0], embedding.row_mut(i)),
                (&outputs[1], logits.row_mut(i)),
            ] {
                let plain = out.try_as_plain_ram().map_err(failed)?;
                let values = plain.as_slice::<f32>().map_err(failed)?;
                if values.len() != row.len() {
                    return Err(EngineError::Inference(format!(
                        "unexpected output width {}",
                        values.len()
                    )));
                }
                row.into_slice()
                    .expect("rows of a standard array are contiguous")
                    .copy_from_slice(values);
            }
        }
        Ok(BackboneOutput { embedding, logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbone_source_names_the_built_in_ones_and_takes_any_other_as_a_path() {
        let parse = |s: &str| s.parse::<BackboneSource>();
        assert_eq!(parse("int8"), Ok(BackboneSource::Embedded(Precision::Int8)));
        assert_eq!(parse("fp32"), Ok(BackboneSource::Embedded(Precision::Fp32)));
        assert_eq!(
            parse("models/x.onnx"),
            Ok(BackboneSource::File(PathBuf::from("models/x.onnx")))
        );
        assert!(parse("").is_err());
    }
}
