//! With the real, embedded model: the success shapes of both endpoints label
//! fixture photos correctly. (The other tests use a stand-in model; this is
//! the one that needs `Labeller::load` to work.)

mod common;

use axum::http::StatusCode;
use common::*;

fn label_of(body: &str) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    body["Output"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_labels_fixtures_through_both_endpoints() {
    let server = TestServer::start(
        "127.0.0.1",
        serve_bytes(fixture("facade.jpg"), "image/jpeg"),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build_real_model()
        .await;
    let key = app.create_key("acme", None, None).await;

    let (status, body) = app.send(upload(Some(&key), &fixture("kitchen.jpg"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let output = label_of(&body);
    assert_eq!(output["Image_Class"], "indoor", "{body}");
    assert_eq!(output["Room_Class"], "kitchen", "{body}");

    let (status, body) = app
        .send(url_request(
            Some(&key),
            &url_json(&server.url("/facade.jpg")),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let output = label_of(&body);
    assert_eq!(output["Image_Class"], "outdoor", "{body}");
    assert_eq!(output["Scene_Class1"], "facade", "{body}");

    let (status, body) = app.send(get("/health", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"engine\""));
}
