//! Shared helpers for the service's integration tests: an in-process app with
//! a stand-in model, requests, bodies and fixtures.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use photolabel_service::api::{router, AppState};
use photolabel_service::config::{KeysCommand, ServeArgs};
use photolabel_service::fetch::Fetcher;
use photolabel_service::server::app_state;
use photolabel_service::store::{SqliteStore, Store};
use photolabel_service::worker::{spawn_worker, Model};
use photolabel_taxonomy::{Distribution, StageProbabilities};
use photolabel_vision::{Labelled, Prepared, Preprocessing, View};
use tower::ServiceExt;

pub const IMAGE_400: &str =
    r#"{"detail":"Please upload an image with one of the following formats: .jpg, .jpeg or .png"}"#;
pub const URL_400: &str = r#"{"detail":"The URL is not valid"}"#;
pub const MISSING_403: &str = r#"{"message":"Missing Authentication Token"}"#;
pub const INTERNAL_500: &str = r#"{"message":"Internal server error"}"#;
pub const IMAGE_422: &str =
    r#"{"detail":[{"loc":["body","image"],"msg":"field required","type":"value_error.missing"}]}"#;
pub const URL_422: &str =
    r#"{"detail":[{"loc":["body","url"],"msg":"field required","type":"value_error.missing"}]}"#;

/// The contract's second example: indoor / other_room / hall_corridor.
pub const INDOOR_BODY: &str = r#"{"Output":{"Image_Class":"indoor","ConfidencePercent_Image_Class":"99.9","Room_Class":"other_room","ConfidencePercent_Room_Class":"96.18","Room_Subclass":"hall_corridor","ConfidencePercent_Room_Subclass":"87.85"}}"#;
/// The contract's first example: outdoor, two scenes.
pub const OUTDOOR_BODY: &str = r#"{"Output":{"Image_Class":"outdoor","ConfidencePercent_Image_Class":"99.99","Scene_Class1":"balcony-garden","ConfidencePercent_Scene_Class1":"59.15","Scene_Class2":"facade","ConfidencePercent_Scene_Class2":"36.92"}}"#;

pub fn indoor_probabilities() -> StageProbabilities {
    StageProbabilities {
        image: Distribution::new(vec![0.999, 0.0005, 0.0005]).expect("image"),
        room: Distribution::new(vec![0.01, 0.01, 0.0082, 0.01, 0.9618]).expect("room"),
        subclass: Distribution::new(vec![0.8785, 0.1, 0.0215]).expect("subclass"),
        scene: Distribution::new(vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0]).expect("scene"),
    }
}

pub fn outdoor_probabilities() -> StageProbabilities {
    StageProbabilities {
        image: Distribution::new(vec![0.00005, 0.9999, 0.00005]).expect("image"),
        room: Distribution::new(vec![1.0, 0.0, 0.0, 0.0, 0.0]).expect("room"),
        subclass: Distribution::new(vec![1.0, 0.0, 0.0]).expect("subclass"),
        scene: Distribution::new(vec![0.3692, 0.01, 0.01, 0.5915, 0.01, 0.0093]).expect("scene"),
    }
}

const PREPROCESSING: Preprocessing = Preprocessing {
    view: View::Squash,
    flip: false,
};

/// A stand-in's answer: these probabilities and an empty embedding (which
/// is like no other, so a listing finds no duplicates among its photos).
pub fn labelled(probabilities: &StageProbabilities) -> Labelled {
    Labelled {
        probabilities: probabilities.clone(),
        embedding: Vec::new(),
        views: 1,
    }
}

/// A model that always answers the same probabilities.
pub struct FixedModel(pub StageProbabilities);

impl Model for FixedModel {
    fn engine_name(&self) -> String {
        "fixed".into()
    }
    fn preprocessing(&self) -> Preprocessing {
        PREPROCESSING
    }
    fn label(&mut self, batch: &[Prepared]) -> Result<Vec<Labelled>, String> {
        Ok(vec![labelled(&self.0); batch.len()])
    }
}

/// A model that panics on every photo.
pub struct PanickingModel;

impl Model for PanickingModel {
    fn engine_name(&self) -> String {
        "panicking".into()
    }
    fn preprocessing(&self) -> Preprocessing {
        PREPROCESSING
    }
    fn label(&mut self, _batch: &[Prepared]) -> Result<Vec<Labelled>, String> {
        panic!("the stand-in model panics on purpose")
    }
}

/// A model that reports each photo it starts on (by its measured width, 0
/// for a single call's photo, which is not measured) and then
/// waits for the test to release it: lets a test hold the worker busy, and
/// see which photo it took next, without timing.
pub struct GateModel {
    pub entered: tokio::sync::mpsc::UnboundedSender<u32>,
    pub release: std_mpsc::Receiver<()>,
    pub answer: StageProbabilities,
}

impl Model for GateModel {
    fn engine_name(&self) -> String {
        "gate".into()
    }
    fn preprocessing(&self) -> Preprocessing {
        PREPROCESSING
    }
    fn label(&mut self, batch: &[Prepared]) -> Result<Vec<Labelled>, String> {
        for photo in batch {
            let _ = self.entered.send(photo.stats.map_or(0, |s| s.width));
        }
        self.release.recv().map_err(|_| "gate closed".to_owned())?;
        Ok(vec![labelled(&self.answer); batch.len()])
    }
}

pub struct Gate {
    pub entered: tokio::sync::mpsc::UnboundedReceiver<u32>,
    pub release: std_mpsc::Sender<()>,
}

pub fn gate_model(answer: StageProbabilities) -> (GateModel, Gate) {
    let (entered_tx, entered_rx) = tokio::sync::mpsc::unbounded_channel();
    let (release_tx, release_rx) = std_mpsc::channel();
    (
        GateModel {
            entered: entered_tx,
            release: release_rx,
            answer,
        },
        Gate {
            entered: entered_rx,
            release: release_tx,
        },
    )
}

pub struct TestApp {
    pub router: Router,
    pub state: Arc<AppState>,
    pub store: Arc<dyn Store>,
    pub args: ServeArgs,
    pub dir: tempfile::TempDir,
}

pub struct AppBuilder {
    pub args: ServeArgs,
    pub fetcher: Option<Fetcher>,
}

impl AppBuilder {
    pub fn new() -> Self {
        Self {
            args: ServeArgs::defaults(),
            fetcher: None,
        }
    }

    pub fn args(mut self, edit: impl FnOnce(&mut ServeArgs)) -> Self {
        edit(&mut self.args);
        self
    }

    pub fn fetcher(mut self, fetcher: Fetcher) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// Builds with a model loaded by `load` on the worker thread.
    pub async fn build_loading<M, F>(self, load: F) -> TestApp
    where
        M: Model,
        F: FnOnce() -> Result<M, String> + Send + 'static,
    {
        self.build_loading_replicas(move || load().map(|model| vec![model]))
            .await
    }

    /// Builds with the model replicas `load` returns on the worker thread.
    pub async fn build_loading_replicas<M, F>(self, load: F) -> TestApp
    where
        M: Model,
        F: FnOnce() -> Result<Vec<M>, String> + Send + 'static,
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = self.args;
        args.store.data_dir = dir.path().to_path_buf();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open_file(&dir.path().join("photolabel.db"))
                .await
                .expect("open store"),
        );
        let fetcher = match self.fetcher {
            Some(fetcher) => fetcher,
            None => Fetcher::new(args.fetch.config()).expect("fetcher"),
        };
        let (worker, _thread) =
            spawn_worker(load, args.queue_capacity, args.max_batch).expect("worker");
        let state = app_state(&args, store.clone(), worker.clone(), fetcher);
        let router = router(state.clone());
        TestApp {
            router,
            state,
            store,
            args,
            dir,
        }
    }

    /// Builds with these replicas of a model, waiting until they are loaded.
    pub async fn build_replicas<M: Model>(self, models: Vec<M>) -> TestApp {
        let app = self.build_loading_replicas(move || Ok(models)).await;
        app.state.worker.wait_loaded().await;
        app
    }

    /// Builds with the real, embedded model, waiting until it is loaded.
    pub async fn build_real_model(self) -> TestApp {
        let app = self
            .build_loading(|| {
                photolabel_vision::Labeller::load(&photolabel_vision::ModelConfig::default())
                    .map_err(|e| e.to_string())
            })
            .await;
        let state = app.state.worker.wait_loaded().await;
        assert!(
            matches!(state, photolabel_service::worker::ModelState::Ready(_)),
            "model failed to load: {state:?}"
        );
        app
    }

    /// Builds with `model`, waiting until the worker reports it loaded.
    pub async fn build<M: Model>(self, model: M) -> TestApp {
        let app = self.build_loading(move || Ok(model)).await;
        app.state.worker.wait_loaded().await;
        app
    }
}

impl TestApp {
    /// Creates a key through the `keys create` command and returns it.
    pub async fn create_key(
        &self,
        name: &str,
        rate_limit: Option<u32>,
        quota: Option<u64>,
    ) -> String {
        let mut out = Vec::new();
        let mut err = Vec::new();
        photolabel_service::cli::run(
            &*self.store,
            KeysCommand::Create {
                name: name.into(),
                rate_limit,
                quota,
            },
            &mut out,
            &mut err,
        )
        .await
        .expect("keys create");
        let out = String::from_utf8(out).expect("utf-8");
        out.trim_end().to_owned()
    }

    pub async fn send(&self, request: Request<Body>) -> (StatusCode, String) {
        send(&self.router, request).await
    }

    /// Like `send`, as a `'static` future for `tokio::spawn`.
    pub fn send_owned(
        &self,
        request: Request<Body>,
    ) -> impl std::future::Future<Output = (StatusCode, String)> + Send + 'static {
        let router = self.router.clone();
        async move { send(&router, request).await }
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub const BOUNDARY: &str = "photolabel-test-boundary-7MA4YWxkTrZu0gW";

/// A `multipart/form-data` body with one file field.
pub fn multipart_body(field: &str, filename: &str, content_type: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
    body.extend_from_slice(
        format!(
            "Content-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
             Content-Type: {content_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn upload_request(key: Option<&str>, body: Vec<u8>) -> Request<Body> {
    multipart_request("/labelling/img", key, body)
}

/// A POST of a multipart body to `path`.
pub fn multipart_request(path: &str, key: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::post(path).header(
        "content-type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    );
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    builder.body(Body::from(body)).expect("request")
}

pub fn upload(key: Option<&str>, data: &[u8]) -> Request<Body> {
    upload_request(
        key,
        multipart_body("image", "photo.jpg", "image/jpeg", data),
    )
}

pub fn url_request(key: Option<&str>, json: &str) -> Request<Body> {
    json_request("/labelling/url", key, json)
}

/// A POST of a JSON body to `path`.
pub fn json_request(path: &str, key: Option<&str>, json: &str) -> Request<Body> {
    let mut builder = Request::post(path).header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    builder.body(Body::from(json.to_owned())).expect("request")
}

/// The default address policy plus one exception: a test's "public"
/// server, which lives on 127.0.0.2.
pub struct AllowOne(pub std::net::IpAddr);

impl photolabel_service::fetch::AddressPolicy for AllowOne {
    fn allows(&self, ip: std::net::IpAddr) -> bool {
        ip == self.0 || photolabel_service::fetch::is_public(ip)
    }
}

/// A fetcher with the system resolver that treats `ip` as public.
pub fn fetcher_allowing(ip: std::net::IpAddr) -> photolabel_service::fetch::Fetcher {
    photolabel_service::fetch::Fetcher::with_parts(
        photolabel_service::fetch::FetchConfig::default(),
        Arc::new(photolabel_service::fetch::SystemResolver),
        Arc::new(AllowOne(ip)),
    )
    .expect("fetcher")
}

/// A `multipart/form-data` body with an `image` field per photo.
pub fn multipart_photos(photos: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (filename, data) in photos {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"{filename}\"\r\nContent-Type: image/jpeg\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// `POST /labelling/listing` with a multipart body.
pub fn listing_upload(key: Option<&str>, body: Vec<u8>) -> Request<Body> {
    multipart_request("/labelling/listing", key, body)
}

/// `POST /labelling/listing` with a JSON body.
pub fn listing_json(key: Option<&str>, json: &str) -> Request<Body> {
    json_request("/labelling/listing", key, json)
}

pub fn url_json(url: &str) -> String {
    serde_json::json!({ "url": url }).to_string()
}

pub fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(key) = key {
        builder = builder.header("x-api-key", key);
    }
    builder.body(Body::empty()).expect("request")
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/photos")
        .join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).expect("fixture photo")
}

/// A small real PNG.
pub fn small_png() -> Vec<u8> {
    png_of_width(64)
}

/// A real PNG `width` pixels wide (and 48 high).
pub fn png_of_width(width: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, 48, |x, y| {
        image::Rgb([x as u8 * 4, y as u8 * 5, 128])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode png");
    bytes.into_inner()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc_input);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
}

/// A PNG whose (valid) header claims `width`×`height` pixels, with almost
/// no data behind it: a decompression bomb's calling card.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    png_chunk(&mut png, b"IHDR", &ihdr);
    // A zlib stream of one empty stored block.
    png_chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
        ],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A loopback listener that must never be connected to; `connections()`
/// says how many connections reached it (without waiting: a connection
/// completes its handshake before the client's `connect` returns, so it is
/// already in the backlog when the request under test has finished).
pub struct Tripwire {
    listener: std::net::TcpListener,
}

impl Tripwire {
    pub fn bind(ip: &str) -> Self {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind tripwire");
        listener.set_nonblocking(true).expect("nonblocking");
        Self { listener }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    pub fn connections(&self) -> usize {
        let mut count = 0;
        while self.listener.accept().is_ok() {
            count += 1;
        }
        count
    }
}

/// A tiny HTTP server on `ip` (loopback) for URL tests; counts requests.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    pub async fn start(ip: &str, routes: Router) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let recorded = hits.clone();
        let app = routes.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let recorded = recorded.clone();
                async move {
                    recorded
                        .lock()
                        .expect("hits")
                        .push(request.uri().path().to_owned());
                    next.run(request).await
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("bind test server");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().expect("hits").clone()
    }
}

/// Serves `bytes` at every path.
pub fn serve_bytes(bytes: Vec<u8>, content_type: &'static str) -> Router {
    Router::new().fallback(move || {
        let bytes = bytes.clone();
        async move { ([("content-type", content_type)], bytes) }
    })
}
