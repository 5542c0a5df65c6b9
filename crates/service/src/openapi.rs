//! The OpenAPI document, generated from the handlers' annotations and the
//! schema types below (which describe, for the document only, bodies that
//! the taxonomy crate and [`crate::error::ApiError`] produce).

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The upload form.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The photo, JPEG or PNG.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
}

/// The URL request.
#[derive(ToSchema, Serialize)]
pub struct UrlRequest {
    /// Public `http`/`https` URL of a JPEG or PNG photo.
    #[schema(example = "https://example.com/photo.jpg")]
    pub url: String,
}

/// The listing upload form: the field `image` repeated, one photo each.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ListingForm {
    /// The photos, JPEG or PNG, each with its file name.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub image: Vec<Vec<u8>>,
}

/// A listing by URL.
#[derive(ToSchema, Serialize)]
pub struct ListingUrls {
    /// Public `http`/`https` URLs of the photos (1 to `--listing-max-photos`).
    #[schema(example = json!(["https://example.com/front.jpg", "https://example.com/kitchen.jpg"]))]
    pub urls: Vec<String>,
}

/// A listing's analysis (see the contract's "Listings" section).
#[derive(ToSchema, Serialize)]
#[schema(example = json!({
    "photos": [
        {"index": 0, "name": "front.jpg",
         "Output": {"Image_Class": "outdoor", "ConfidencePercent_Image_Class": "99.09",
                    "Scene_Class1": "facade", "ConfidencePercent_Scene_Class1": "99.71"},
         "quality": {"width": 1440, "height": 960, "sharpness": 0.52, "brightness": 0.47, "flags": []},
         "duplicate_of": null},
        {"index": 1, "name": "broken.jpg",
         "error": {"status": 400, "detail": "Please upload an image with one of the following formats: .jpg, .jpeg or .png"}}
    ],
    "order": [0], "cover": 0, "duplicates": [],
    "inventory": {"facade": 1},
    "checks": [{"code": "no_kitchen", "message": "No kitchen among the photos."}]
}))]
pub struct ListingResponse {
    /// Every photo in the order sent: `index`, `name` (file name or URL)
    /// and either `Output` (as `/labelling/img` answers), `quality`
    /// (`width`, `height`, `sharpness`, `brightness`, `flags` among `small`,
    /// `blurry`, `dark`, `overexposed`) and `duplicate_of` (the kept photo's
    /// index or null), or `error` (`status` plus the body the single-photo
    /// endpoints would give).
    #[schema(value_type = Vec<Object>)]
    pub photos: Vec<serde_json::Value>,
    /// Indexes of the labelled photos in the suggested order.
    pub order: Vec<usize>,
    /// Index of the cover photo: the best facade, else the best living room,
    /// else the best photo.
    pub cover: Option<usize>,
    /// Groups of the same shot: the kept (best) photo first.
    pub duplicates: Vec<Vec<usize>>,
    /// Distinct photos per leaf class.
    #[schema(value_type = Object)]
    pub inventory: serde_json::Value,
    /// Failed checks: `code` (`no_exterior`, `no_kitchen`, `no_bathroom`,
    /// `no_floor_plan`, `few_photos`, `duplicates`, `low_quality`) and an
    /// English `message`.
    #[schema(value_type = Vec<Object>)]
    pub checks: Vec<serde_json::Value>,
}

/// A successful answer.
#[derive(ToSchema, Serialize)]
#[schema(example = json!({"Output": {"Image_Class": "indoor", "ConfidencePercent_Image_Class": "99.9",
    "Room_Class": "other_room", "ConfidencePercent_Room_Class": "96.18",
    "Room_Subclass": "hall_corridor", "ConfidencePercent_Room_Subclass": "87.85"}}))]
pub struct LabelResponse {
    #[serde(rename = "Output")]
    pub output: LabelOutput,
}

/// The labels. Keys appear in this order and only when they apply;
/// confidences are percentages as strings, rounded to two decimals the way
/// Python prints a float (`"99.9"`, `"100.0"`).
#[derive(ToSchema, Serialize)]
pub struct LabelOutput {
    #[serde(rename = "Image_Class")]
    #[schema(inline)]
    pub image_class: ImageClassName,
    #[serde(rename = "ConfidencePercent_Image_Class")]
    #[schema(example = "99.99")]
    pub confidence_image_class: String,
    /// For `indoor`.
    #[serde(rename = "Room_Class")]
    #[schema(inline)]
    pub room_class: Option<RoomClassName>,
    #[serde(rename = "ConfidencePercent_Room_Class")]
    pub confidence_room_class: Option<String>,
    /// For `other_room` only.
    #[serde(rename = "Room_Subclass")]
    #[schema(inline)]
    pub room_subclass: Option<RoomSubclassName>,
    #[serde(rename = "ConfidencePercent_Room_Subclass")]
    pub confidence_room_subclass: Option<String>,
    /// For `outdoor`.
    #[serde(rename = "Scene_Class1")]
    #[schema(inline)]
    pub scene_class1: Option<SceneClassName>,
    #[serde(rename = "ConfidencePercent_Scene_Class1")]
    pub confidence_scene_class1: Option<String>,
    /// Only when the top scene's confidence is at or below the threshold
    /// (70.0 by default).
    #[serde(rename = "Scene_Class2")]
    #[schema(inline)]
    pub scene_class2: Option<SceneClassName>,
    #[serde(rename = "ConfidencePercent_Scene_Class2")]
    pub confidence_scene_class2: Option<String>,
}

#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageClassName {
    Indoor,
    Outdoor,
    Other,
}

#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomClassName {
    LivingRoom,
    Kitchen,
    Bathroom,
    Bedroom,
    OtherRoom,
}

#[derive(ToSchema, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomSubclassName {
    HallCorridor,
    Room,
    Scullery,
}

#[derive(ToSchema, Serialize)]
pub enum SceneClassName {
    #[serde(rename = "facade")]
    Facade,
    #[serde(rename = "view")]
    View,
    #[serde(rename = "street")]
    Street,
    #[serde(rename = "balcony-garden")]
    BalconyGarden,
    #[serde(rename = "building_part")]
    BuildingPart,
    #[serde(rename = "no_building")]
    NoBuilding,
}

/// `{"detail": "..."}`
#[derive(ToSchema, Serialize)]
pub struct Detail {
    #[schema(example = "The URL is not valid")]
    pub detail: String,
}

/// `{"message": "..."}`
#[derive(ToSchema, Serialize)]
pub struct Message {
    #[schema(example = "Missing Authentication Token")]
    pub message: String,
}

/// The answer for an unknown or revoked key.
#[derive(ToSchema, Serialize)]
pub struct InvalidKey {
    #[serde(rename = "Output")]
    #[schema(
        example = "The API key in the x-api-key header is not valid: it is unknown or has been revoked."
    )]
    pub output: String,
}

/// A missing field (FastAPI's validation error shape).
#[derive(ToSchema, Serialize)]
#[schema(example = json!({"detail": [{"loc": ["body", "image"], "msg": "field required", "type": "value_error.missing"}]}))]
pub struct ValidationError {
    pub detail: Vec<ValidationItem>,
}

#[derive(ToSchema, Serialize)]
pub struct ValidationItem {
    pub loc: Vec<String>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// Readiness.
#[derive(ToSchema, Serialize)]
pub struct Health {
    /// `ok`, `loading`, `failed` or `database_unreachable`.
    pub status: String,
    /// The inference engine, once loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Model replicas labelling in parallel, once loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// Why the replica is not ready, where there is more to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The key from `photolabel keys create`.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "photolabel",
        description = "Self-hosted, wire-compatible replacement for Altum AI's Photo Labelling API: \
                       labels real-estate photos as indoor (room), outdoor (scene) or other."
    ),
    paths(
        crate::api::label_upload,
        crate::api::label_url,
        crate::listing::label_listing,
        crate::api::credit,
        crate::api::health,
        crate::api::metrics,
        crate::api::openapi_document,
    ),
    components(schemas(
        UploadForm, UrlRequest, ListingForm, ListingUrls, ListingResponse, LabelResponse,
        LabelOutput, Detail, Message, InvalidKey,
        ValidationError, ValidationItem, Health, crate::store::Usage
    )),
    modifiers(&ApiKeyScheme),
    tags(
        (name = "labelling", description = "The Altum-compatible endpoints, and listings (our extension)"),
        (name = "account", description = "Usage of the calling key"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document as served, pretty-printed with a final newline (and so
/// identical to the committed `openapi.json`).
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut json = ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_owned());
        json.push('\n');
        json
    })
}
