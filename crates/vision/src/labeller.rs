//! The labeller: one backbone engine plus the heads trained on it.

use std::path::PathBuf;

use ndarray::{s, Array2, Array3, Array4, Axis};
use photolabel_taxonomy::StageProbabilities;

use crate::backbone::{
    load_backbone, resolve_engine, Backbone, BackboneModel, BackboneSource, EngineConfig,
    EngineError, EMBEDDING_DIM, INPUT_SIZE,
};
use crate::heads::{Heads, HeadsError, SecondView};
use crate::image::{Prepared, Preprocessing};

#[derive(Debug, thiserror::Error)]
pub enum LabellerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Heads(#[from] HeadsError),
    #[error("photo {index} of the batch has {views} views, expected {expected}")]
    ViewMismatch {
        index: usize,
        views: usize,
        expected: usize,
    },
}

/// Which model files to load and how to run them. The default is the
/// backbone and heads compiled into the binary, on ONNX Runtime if present.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    /// Which backbone: by default the built-in one that suits the engine.
    pub backbone: BackboneSource,
    /// A heads file instead of the built-in heads of the loaded backbone.
    pub heads: Option<PathBuf>,
    /// When to run the mirrored view, instead of what the heads file says.
    pub second_view: Option<SecondView>,
    pub engine: EngineConfig,
}

/// The backbone engine with the preprocessing its embeddings are made with:
/// what `photolabel train` needs before any heads exist.
pub struct Embedder {
    backbone: Box<dyn Backbone>,
    preprocessing: Preprocessing,
    backbone_sha256: String,
}

impl Embedder {
    pub fn load(config: &ModelConfig, preprocessing: Preprocessing) -> Result<Self, LabellerError> {
        let (model, config) = load_model(config)?;
        Self::new(&model, &config, preprocessing)
    }

    fn new(
        model: &BackboneModel,
        config: &ModelConfig,
        preprocessing: Preprocessing,
    ) -> Result<Self, LabellerError> {
        Ok(Self {
            backbone: load_backbone(model, &config.engine)?,
            preprocessing,
            backbone_sha256: model.sha256.clone(),
        })
    }

    pub fn preprocessing(&self) -> Preprocessing {
        self.preprocessing
    }

    pub fn engine_name(&self) -> &'static str {
        self.backbone.name()
    }

    pub fn backbone_sha256(&self) -> &str {
        &self.backbone_sha256
    }

    /// Embeddings `[photos, EMBEDDING_DIM]` of a batch: each photo's views averaged.
    pub fn embed(&mut self, batch: &[Prepared]) -> Result<Array2<f32>, LabellerError> {
        Ok(self
            .embed_views(batch)?
            .mean_axis(Axis(1))
            .unwrap_or_else(|| Array2::zeros((batch.len(), EMBEDDING_DIM))))
    }

    /// Embeddings `[photos, views, EMBEDDING_DIM]` of a batch, one per view: the
    /// backbone runs every view of every photo in one call. Training keeps
    /// the views apart; labelling averages them ([`Embedder::embed`]).
    pub fn embed_views(&mut self, batch: &[Prepared]) -> Result<Array3<f32>, LabellerError> {
        let views = batch.first().map_or(1, |p| p.tensor.shape()[0]);
        if let Some((index, bad)) = batch
            .iter()
            .enumerate()
            .find(|(_, p)| p.tensor.shape()[0] != views)
        {
            return Err(LabellerError::ViewMismatch {
                index,
                views: bad.tensor.shape()[0],
                expected: views,
            });
        }
        if batch.is_empty() {
            return Ok(Array3::zeros((0, views, EMBEDDING_DIM)));
        }
        // The common case (one photo per request) runs on the photo's own
        // tensor; only real batches are copied into one array.
        let joined;
        let input = if let [only] = batch {
            only.tensor.view()
        } else {
            let mut input = Array4::<f32>::zeros((batch.len() * views, 3, INPUT_SIZE, INPUT_SIZE));
            for (i, photo) in batch.iter().enumerate() {
                input
                    .slice_mut(s![i * views..(i + 1) * views, .., .., ..])
                    .assign(&photo.tensor);
            }
            joined = input;
            joined.view()
        };
        let output = self.backbone.infer(input)?;
        Ok(output
            .embedding
            .into_shape_with_order((batch.len(), views, EMBEDDING_DIM))
            .map_err(|e| EngineError::Inference(e.to_string()))?)
    }
}

/// The backbone to load, and the configuration with its engine settled
/// (the default backbone depends on the engine).
fn load_model(config: &ModelConfig) -> Result<(BackboneModel, ModelConfig), LabellerError> {
    let mut config = config.clone();
    config.engine.kind = resolve_engine(&config.engine)?;
    let model = BackboneModel::load(&config.backbone, config.engine.kind)?;
    Ok((model, config))
}

/// What labelling one photo gives: the per-stage probabilities, and the
/// embedding they came from (which the listing analysis compares).
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub probabilities: StageProbabilities,
    /// The last layer's pooled features (of both views averaged where both
    /// ran), for the listing's duplicate search.
    pub embedding: Vec<f32>,
    /// Backbone passes the photo took: 1, or 2 with the mirrored view.
    pub views: usize,
}

/// Owns the model. Not `Sync`: exactly one inference worker holds it.
pub struct Labeller {
    embedder: Embedder,
    heads: Heads,
}

impl Labeller {
    /// Loads the backbone and heads, refusing heads made for another backbone.
    pub fn load(config: &ModelConfig) -> Result<Self, LabellerError> {
        let mut labellers = Self::load_replicas(config, 1)?;
        Ok(labellers.remove(0))
    }

    /// Loads `replicas` (at least one) independent copies to run side by
    /// side, each with [`EngineConfig::for_replicas`]'s threads. The model
    /// file and heads are read and checked once.
    pub fn load_replicas(
        config: &ModelConfig,
        replicas: usize,
    ) -> Result<Vec<Self>, LabellerError> {
        let (model, config) = load_model(config)?;
        let mut heads = match &config.heads {
            Some(path) => Heads::from_file(path)?,
            None => Heads::embedded_for(&model.sha256)?,
        };
        if let Some(second_view) = config.second_view {
            heads.second_view = second_view;
            heads.validate()?;
        }
        heads.check_backbone(&model.sha256)?;
        let config = ModelConfig {
            engine: config.engine.for_replicas(replicas),
            ..config
        };
        (0..replicas.max(1))
            .map(|_| {
                Ok(Self {
                    embedder: Embedder::new(&model, &config, heads.preprocessing)?,
                    heads: heads.clone(),
                })
            })
            .collect()
    }

    /// The preprocessing `prepare` must use for [`Labeller::label`]: the
    /// heads' own, but with only the upright view unless every photo gets
    /// the mirrored one (then both are made in one go); where it is wanted,
    /// the labeller mirrors the prepared view itself.
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            flip: self.heads.second_view == SecondView::Always && self.heads.preprocessing.flip,
            ..self.embedder.preprocessing
        }
    }

    pub fn engine_name(&self) -> &'static str {
        self.embedder.engine_name()
    }

    pub fn backbone_sha256(&self) -> &str {
        self.embedder.backbone_sha256()
    }

    pub fn heads(&self) -> &Heads {
        &self.heads
    }

    pub fn embedder_mut(&mut self) -> &mut Embedder {
        &mut self.embedder
    }

    /// The embeddings of the views each photo of the batch needs
    /// (`[views, EMBEDDING_DIM]`, upright first): the upright view, and the mirrored
    /// one only for photos whose first answer is unsure
    /// ([`Heads::wants_second_view`]), all of those in a second call.
    /// Photos prepared with both views (the heads want both always) have
    /// both run in the first call.
    pub fn embed_needed_views(
        &mut self,
        batch: &[Prepared],
    ) -> Result<Vec<Array2<f32>>, LabellerError> {
        let first = self.embedder.embed_views(batch)?;
        let mut views: Vec<Array2<f32>> = first.outer_iter().map(|v| v.to_owned()).collect();
        if first.dim().1 > 1 || !self.heads.uses_second_view() {
            return Ok(views);
        }
        let wanted: Vec<usize> = views
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                self.heads
                    .wants_second_view(&self.heads.stage_probabilities(v.row(0)))
            })
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() {
            return Ok(views);
        }
        let mirrored: Vec<Prepared> = wanted.iter().map(|&i| batch[i].mirrored()).collect();
        let second = self.embedder.embed_views(&mirrored)?;
        for (&i, extra) in wanted.iter().zip(second.outer_iter()) {
            views[i] = ndarray::concatenate(Axis(0), &[views[i].view(), extra])
                .map_err(|e| EngineError::Inference(e.to_string()))?;
        }
        Ok(views)
    }

    /// Labels a batch of prepared photos (one result per photo, same order).
    pub fn label(&mut self, batch: &[Prepared]) -> Result<Vec<Labelled>, LabellerError> {
        Ok(self
            .embed_needed_views(batch)?
            .iter()
            .map(|views| {
                let outcome = self.heads.label_views(views.view());
                Labelled {
                    embedding: outcome.pooled(),
                    probabilities: outcome.probabilities,
                    views: outcome.views,
                }
            })
            .collect())
    }
}
