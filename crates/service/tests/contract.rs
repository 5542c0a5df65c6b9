//! One test per row of the contract's error table and per success shape,
//! each asserting the exact status and body, against the in-process router
//! with a stand-in model (the real model's labels are in `model.rs`).

use std::time::Duration;

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use photolabel_service::worker::ModelState;
use tower::ServiceExt;

async fn fixed_app(answer: photolabel_taxonomy::StageProbabilities) -> TestApp {
    AppBuilder::new().build(FixedModel(answer)).await
}

// ---- 200 ------------------------------------------------------------------

#[tokio::test]
async fn upload_success_indoor_shape() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, INDOOR_BODY));
}

#[tokio::test]
async fn upload_success_outdoor_shape_with_second_scene() {
    let app = fixed_app(outdoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app.send(upload(Some(&key), &fixture("facade.jpg"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, OUTDOOR_BODY));
}

#[tokio::test]
async fn upload_success_png() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let body = multipart_body("image", "photo.png", "image/png", &small_png());
    let (status, body) = app.send(upload_request(Some(&key), body)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, INDOOR_BODY));
}

#[tokio::test]
async fn upload_ignores_other_fields() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let mut body =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n")
            .into_bytes();
    body.extend(multipart_body(
        "image",
        "k.jpg",
        "image/jpeg",
        &fixture("kitchen.jpg"),
    ));
    let (status, body) = app.send(upload_request(Some(&key), body)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, INDOOR_BODY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_success_outdoor_shape() {
    let server = TestServer::start(
        "127.0.0.1",
        serve_bytes(fixture("facade.jpg"), "image/jpeg"),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build(FixedModel(outdoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app
        .send(url_request(
            Some(&key),
            &url_json(&server.url("/facade.jpg")),
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, OUTDOOR_BODY));
    assert_eq!(server.hits(), vec!["/facade.jpg"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_follows_a_redirect_it_may_follow() {
    let image = TestServer::start(
        "127.0.0.1",
        serve_bytes(fixture("kitchen.jpg"), "image/jpeg"),
    )
    .await;
    let target = image.url("/final.jpg");
    let redirector = TestServer::start(
        "127.0.0.1",
        axum::Router::new().fallback(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app
        .send(url_request(
            Some(&key),
            &url_json(&redirector.url("/start.jpg")),
        ))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, INDOOR_BODY));
    assert_eq!(image.hits(), vec!["/final.jpg"]);
}

// ---- 400 ------------------------------------------------------------------

#[tokio::test]
async fn upload_of_zero_bytes_is_400() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app.send(upload(Some(&key), b"")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, IMAGE_400)
    );
}

#[tokio::test]
async fn upload_of_text_named_jpg_is_400() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let body = multipart_body(
        "image",
        "photo.jpg",
        "image/jpeg",
        b"<html>not a photo</html>",
    );
    let (status, body) = app.send(upload_request(Some(&key), body)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, IMAGE_400)
    );
}

#[tokio::test]
async fn upload_of_truncated_jpeg_is_400() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let jpeg = fixture("kitchen.jpg");
    let (status, body) = app.send(upload(Some(&key), &jpeg[..200])).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, IMAGE_400)
    );
}

#[tokio::test]
async fn upload_of_png_claiming_100000_squared_pixels_is_400() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let body = multipart_body(
        "image",
        "bomb.png",
        "image/png",
        &png_claiming(100_000, 100_000),
    );
    let (status, body) = app.send(upload_request(Some(&key), body)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, IMAGE_400)
    );
}

#[tokio::test]
async fn upload_over_the_pixel_limit_is_400() {
    let app = AppBuilder::new()
        .args(|a| a.max_pixels = 1000)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, IMAGE_400)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_that_is_not_an_image_is_400() {
    let server = TestServer::start(
        "127.0.0.1",
        serve_bytes(b"<html></html>".to_vec(), "image/jpeg"),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app
        .send(url_request(Some(&key), &url_json(&server.url("/a.jpg"))))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, URL_400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_answering_404_is_400() {
    let server = TestServer::start(
        "127.0.0.1",
        axum::Router::new().fallback(|| async { StatusCode::NOT_FOUND }),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app
        .send(url_request(Some(&key), &url_json(&server.url("/gone.jpg"))))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, URL_400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_body_over_the_download_cap_is_400() {
    let server = TestServer::start(
        "127.0.0.1",
        serve_bytes(fixture("kitchen.jpg"), "image/jpeg"),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| {
            a.fetch.allow_private_urls = true;
            a.fetch.url_max_bytes = 1000;
        })
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app
        .send(url_request(Some(&key), &url_json(&server.url("/big.jpg"))))
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, URL_400));
}

#[tokio::test]
async fn malformed_url_is_400() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    for url in [
        "",
        "not a url",
        "http://",
        "https://exa mple.com/a.jpg",
        "//example.com/a.jpg",
    ] {
        let (status, body) = app.send(url_request(Some(&key), &url_json(url))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, URL_400),
            "{url:?}"
        );
    }
}

// ---- 401 / 403 --------------------------------------------------------------

#[tokio::test]
async fn unknown_key_is_401() {
    let app = fixed_app(indoor_probabilities()).await;
    let _ = app.create_key("acme", None, None).await;
    let expected = serde_json::json!({ "Output": photolabel_service::error::INVALID_KEY_OUTPUT });
    for request in [
        upload(Some("pl_not-a-real-key"), &fixture("kitchen.jpg")),
        url_request(
            Some("pl_not-a-real-key"),
            &url_json("https://example.com/a.jpg"),
        ),
        get("/credit", Some("wrong")),
    ] {
        let (status, body) = app.send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body, expected);
        assert!(expected["Output"]
            .as_str()
            .is_some_and(|s| s.contains("not valid")));
    }
}

#[tokio::test]
async fn created_key_works_then_revoked_key_is_401() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let (status, _) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::OK);

    let mut out = Vec::new();
    let mut err = Vec::new();
    photolabel_service::cli::run(
        &*app.store,
        photolabel_service::KeysCommand::Revoke {
            id_or_name: "acme".into(),
        },
        &mut out,
        &mut err,
    )
    .await
    .expect("revoke");

    let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        serde_json::json!({ "Output": photolabel_service::error::INVALID_KEY_OUTPUT }).to_string()
    );
}

#[tokio::test]
async fn missing_key_is_403() {
    let app = fixed_app(indoor_probabilities()).await;
    for request in [
        upload(None, &fixture("kitchen.jpg")),
        url_request(None, &url_json("https://example.com/a.jpg")),
        get("/credit", None),
        // An empty header is no key either.
        Request::post("/labelling/url")
            .header("x-api-key", "")
            .body(Body::from(url_json("https://example.com/a.jpg")))
            .expect("request"),
    ] {
        let (status, body) = app.send(request).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::FORBIDDEN, MISSING_403)
        );
    }
}

// ---- 413 ------------------------------------------------------------------

#[tokio::test]
async fn declared_oversize_body_is_413_before_reading() {
    let app = AppBuilder::new()
        .args(|a| a.max_body_bytes = 1024)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    // The declared length alone decides: the body here is never read.
    let request = Request::post("/labelling/img")
        .header("x-api-key", &key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("content-length", "1000000")
        .body(Body::empty())
        .expect("request");
    let (status, body) = app.send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body,
        r#"{"detail":"The request body is larger than the limit of 1024 bytes"}"#
    );
}

#[tokio::test]
async fn streamed_oversize_body_is_413() {
    let app = AppBuilder::new()
        .args(|a| a.max_body_bytes = 4096)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    // No Content-Length: a stream of chunks that crosses the limit.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = {
        let body = multipart_body("image", "k.jpg", "image/jpeg", &fixture("kitchen.jpg"));
        body.chunks(1000)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect()
    };
    let stream = futures_stream(chunks);
    let request = Request::post("/labelling/img")
        .header("x-api-key", &key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from_stream(stream))
        .expect("request");
    let (status, body) = app.send(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        body,
        r#"{"detail":"The request body is larger than the limit of 4096 bytes"}"#
    );
}

/// A stream of ready items, without pulling in a stream crate.
fn futures_stream<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

// ---- 422 ------------------------------------------------------------------

#[tokio::test]
async fn upload_without_image_field_is_422() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let body = multipart_body("photo", "k.jpg", "image/jpeg", &fixture("kitchen.jpg"));
    let (status, body) = app.send(upload_request(Some(&key), body)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, IMAGE_422)
    );
}

#[tokio::test]
async fn upload_that_is_not_multipart_is_422() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    for request in [
        Request::post("/labelling/img")
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .expect("request"),
        Request::post("/labelling/img")
            .header("x-api-key", &key)
            .body(Body::empty())
            .expect("request"),
        upload_request(Some(&key), b"--garbage".to_vec()),
    ] {
        let (status, body) = app.send(request).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, IMAGE_422)
        );
    }
}

#[tokio::test]
async fn url_without_url_field_or_with_malformed_json_is_422() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    for json in [
        r#"{}"#,
        r#"{"link": "https://example.com/a.jpg"}"#,
        r#"{"url": "#,
        "",
        r#"{"url": 42}"#,
    ] {
        let (status, body) = app.send(url_request(Some(&key), json)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, URL_422),
            "{json:?}"
        );
    }
}

// ---- 429 ------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_gives_429() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", Some(2), None).await;
    for _ in 0..2 {
        let (status, _) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let refused = app
        .router
        .clone()
        .oneshot(upload(Some(&key), &fixture("kitchen.jpg")))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 2 per minute: the next token comes within 30 s.
    let wait: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    let body = axum::body::to_bytes(refused.into_body(), usize::MAX)
        .await
        .expect("body");
    assert_eq!(
        body,
        r#"{"detail":"Rate limit exceeded: this key may make 2 requests per minute"}"#.as_bytes()
    );
    // Another key is not affected.
    let other = app.create_key("other", Some(2), None).await;
    let (status, _) = app
        .send(upload(Some(&other), &fixture("kitchen.jpg")))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn spent_quota_gives_429() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, Some(1)).await;
    let (status, _) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        r#"{"detail":"Quota exceeded: this key has used all of its 1 calls"}"#
    );
}

// ---- 500 ------------------------------------------------------------------

#[tokio::test]
async fn model_panic_is_500_and_the_worker_survives() {
    let app = AppBuilder::new().build(PanickingModel).await;
    let key = app.create_key("acme", None, None).await;
    for _ in 0..2 {
        let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_500)
        );
    }
}

async fn panicking_handler() -> &'static str {
    panic!("a handler panics on purpose")
}

#[tokio::test]
async fn handler_panic_is_500() {
    use axum::routing::get as get_route;
    let app = fixed_app(indoor_probabilities()).await;
    let router = photolabel_service::api::with_layers(
        photolabel_service::api::routes(app.state.clone())
            .route("/panic", get_route(panicking_handler)),
        app.state.body_limits,
    );
    let (status, body) = send(&router, get("/panic", None)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL_500)
    );
}

// ---- 503 ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_503_at_once() {
    let (model, mut gate) = gate_model(indoor_probabilities());
    let app = AppBuilder::new()
        .args(|a| a.queue_capacity = 1)
        .build(model)
        .await;
    let key = app.create_key("acme", None, None).await;

    // A: taken by the worker, which holds it until released.
    let a = tokio::spawn(app.send_owned(upload(Some(&key), &fixture("kitchen.jpg"))));
    gate.entered.recv().await.expect("A reached the model");
    // B: waits in the queue's only place.
    let b = tokio::spawn(app.send_owned(upload(Some(&key), &fixture("kitchen.jpg"))));
    while app.state.worker.depth() < 1 {
        tokio::task::yield_now().await;
    }
    // C: no place left.
    let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        r#"{"detail":"The server is busy labelling other photos; retry shortly"}"#
    );

    gate.release.send(()).expect("release A");
    gate.release.send(()).expect("release B");
    assert_eq!(a.await.expect("A").0, StatusCode::OK);
    assert_eq!(b.await.expect("B").0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_label_two_photos_at_once() {
    let (first, mut first_gate) = gate_model(indoor_probabilities());
    let (second, mut second_gate) = gate_model(indoor_probabilities());
    let app = AppBuilder::new().build_replicas(vec![first, second]).await;
    let key = app.create_key("acme", None, None).await;

    let a = tokio::spawn(app.send_owned(upload(Some(&key), &fixture("kitchen.jpg"))));
    let b = tokio::spawn(app.send_owned(upload(Some(&key), &fixture("kitchen.jpg"))));
    // Each replica holds its photo until released, so both photos reach a
    // model only if the replicas run side by side. The time limit only turns
    // a hang into a failure.
    for gate in [&mut first_gate, &mut second_gate] {
        tokio::time::timeout(Duration::from_secs(60), gate.entered.recv())
            .await
            .expect("both replicas took a photo while neither had finished")
            .expect("gate open");
    }
    first_gate.release.send(()).expect("release the first");
    second_gate.release.send(()).expect("release the second");
    assert_eq!(a.await.expect("A").0, StatusCode::OK);
    assert_eq!(b.await.expect("B").0, StatusCode::OK);

    let (status, body) = app.send(get("/health", None)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::OK,
            r#"{"status":"ok","engine":"gate","replicas":2}"#
        )
    );
}

#[tokio::test]
async fn model_still_loading_is_503_and_health_says_so() {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let app = AppBuilder::new()
        .build_loading(move || {
            let _ = wait.recv();
            Ok(FixedModel(indoor_probabilities()))
        })
        .await;
    let key = app.create_key("acme", None, None).await;
    let (status, body) = app.send(get("/health", None)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"loading"}"#)
    );
    let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        r#"{"detail":"The model is still loading; retry shortly"}"#
    );

    release.send(()).expect("release loading");
    assert!(matches!(
        app.state.worker.wait_loaded().await,
        ModelState::Ready(_)
    ));
    let (status, body) = app.send(get("/health", None)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::OK,
            r#"{"status":"ok","engine":"fixed","replicas":1}"#
        )
    );
}

// ---- the rest of the surface --------------------------------------------

#[tokio::test]
async fn ledger_counts_successful_calls_only() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, Some(100)).await;
    for _ in 0..3 {
        let (status, _) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Failures are not counted.
    let (status, _) = app.send(upload(Some(&key), b"nope")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.send(url_request(Some(&key), "{}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, body) = app.send(get("/credit", Some(&key))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        r#"{"name":"acme","calls_used":3,"quota":100,"calls_remaining":97,"calls_by_endpoint":{"/labelling/img":3}}"#
    );
}

#[tokio::test]
async fn unknown_path_and_wrong_method_are_json() {
    let app = fixed_app(indoor_probabilities()).await;
    let (status, body) = app.send(get("/nope", None)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, r#"{"detail":"Not Found"}"#)
    );
    let (status, body) = app.send(get("/labelling/img", None)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"detail":"Method Not Allowed"}"#
        )
    );
}

#[tokio::test]
async fn openapi_document_matches_the_committed_file() {
    let app = fixed_app(indoor_probabilities()).await;
    let (status, served) = app.send(get("/labelling/openapi", None)).await;
    assert_eq!(status, StatusCode::OK);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).expect("write openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        served == committed,
        "the served OpenAPI document differs from crates/service/openapi.json; \
         regenerate it with `UPDATE_OPENAPI=1 cargo test -p photolabel-service --test contract openapi`"
    );
    let doc: serde_json::Value = serde_json::from_str(&served).expect("JSON");
    for path in [
        "/labelling/img",
        "/labelling/url",
        "/labelling/listing",
        "/credit",
        "/health",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = fixed_app(indoor_probabilities()).await;
    let (status, html) = app.send(get("/docs", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("/docs/swagger-ui-bundle.js"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from a CDN"
    );
    let (status, js) = app.send(get("/docs/swagger-initializer.js", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(js.contains("/labelling/openapi"));
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        let (status, body) = app.send(get(asset, None)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.len() > 10_000, "{asset}");
    }
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_csp() {
    let app = fixed_app(indoor_probabilities()).await;
    let response = app
        .router
        .clone()
        .oneshot(get("/", None))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let html = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let html = String::from_utf8_lossy(&html);
    // Every script is a file of this origin: no inline code, no CDN.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains(r#"<script type="module" src="/ui/app.js"></script>"#));
    // No inline event handler (` onclick=`, ` onload=`, …) anywhere.
    let handlers: Vec<&str> = html
        .split(' ')
        .filter(|word| {
            word.strip_prefix("on")
                .and_then(|rest| rest.split_once('='))
                .is_some_and(|(name, _)| {
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase())
                })
        })
        .collect();
    assert!(handlers.is_empty(), "inline handlers: {handlers:?}");
    // Nothing loaded from another origin (the URL field's placeholder is
    // only text).
    for attribute in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(attribute), "{attribute}");
    }
    for (asset, kind) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let response = app
            .router
            .clone()
            .oneshot(get(asset, None))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert_eq!(response.headers()["content-type"], kind, "{asset}");
    }
}

#[tokio::test]
async fn no_ui_leaves_the_page_out() {
    let app = AppBuilder::new()
        .args(|args| args.no_ui = true)
        .build(FixedModel(indoor_probabilities()))
        .await;
    for path in ["/", "/ui/app.js"] {
        let (status, body) = app.send(get(path, None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, r#"{"detail":"Not Found"}"#);
    }
    // The API is unchanged.
    let (status, _) = app.send(get("/health", None)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_report_requests_and_queue_depth() {
    let app = fixed_app(indoor_probabilities()).await;
    let key = app.create_key("acme", None, None).await;
    let (status, _) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) = app.send(get("/metrics", None)).await;
    assert_eq!(status, StatusCode::OK);
    for needle in [
        "photolabel_requests_total",
        "endpoint=\"/labelling/img\"",
        "status=\"200\"",
        "photolabel_request_duration_seconds_bucket",
        "photolabel_inference_seconds",
        "photolabel_backbone_passes_total",
        "photolabel_queue_depth",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    assert!(!text.contains(&key), "the key never appears in metrics");
}
