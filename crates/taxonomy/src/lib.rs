//! The Altum photo-labelling taxonomy and the rules that turn per-stage
//! probabilities into the contract's `Output` object.
//!
//! This crate is pure: no I/O, no model. Everything that decides *what* a
//! client sees — which keys, in which order, how confidences are printed —
//! lives here, so it can be tested exhaustively without a backbone.

mod classes;
mod confidence;
mod decision;

pub use classes::{ImageClass, RoomClass, RoomSubclass, SceneClass, TaxonomyClass, UnknownClass};
pub use confidence::format_confidence;
pub use decision::{
    decide, DecisionRules, Distribution, InvalidDistribution, Label, LabelDetail, Output,
    StageProbabilities, DEFAULT_SECOND_SCENE_THRESHOLD,
};
