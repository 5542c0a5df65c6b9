//! The request log names the key by id and name, never by the key itself;
//! nor does any response body or the metrics page carry it.
//! (Its own test binary: it installs a global log subscriber.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::*;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_appears_in_logs_metrics_or_bodies() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let server = TestServer::start(
        "127.0.0.1",
        serve_bytes(fixture("kitchen.jpg"), "image/jpeg"),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", Some(3), None).await;
    let revoked = app.create_key("gone", None, None).await;
    photolabel_service::cli::run(
        &*app.store,
        photolabel_service::KeysCommand::Revoke {
            id_or_name: "gone".into(),
        },
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .await
    .expect("revoke");

    let wrong = format!("{key}x");
    let requests = vec![
        upload(Some(&key), &fixture("kitchen.jpg")),
        url_request(Some(&key), &url_json(&server.url("/k.jpg"))),
        upload(Some(&key), b"not an image"),
        upload(Some(&key), b"rate limited"),
        upload(Some(&revoked), &fixture("kitchen.jpg")),
        upload(Some(&wrong), &fixture("kitchen.jpg")),
        get("/credit", Some(&key)),
        get("/credit", Some(&revoked)),
        upload(None, &fixture("kitchen.jpg")),
        get("/nowhere", Some(&key)),
    ];
    let mut responses = Vec::new();
    for request in requests {
        responses.push(app.send(request).await);
    }
    // A fresh key for the error paths the rate-limited one cannot reach.
    let other = app.create_key("other", None, None).await;
    for request in [
        upload_request(Some(&other), b"no multipart here".to_vec()),
        url_request(Some(&other), "{}"),
        // Refused before any network: the scheme.
        url_request(Some(&other), &url_json("ftp://example.com/k.jpg")),
    ] {
        responses.push(app.send(request).await);
    }
    let statuses: Vec<StatusCode> = responses.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::BAD_REQUEST,
        ]
    );
    let (status, metrics) = app.send(get("/metrics", None)).await;
    assert_eq!(status, StatusCode::OK);
    // The metrics did record the requests (by endpoint and status, which is
    // all they label)...
    assert!(
        metrics.contains("photolabel_requests_total") && metrics.contains("/labelling/img"),
        "metrics:\n{metrics}"
    );

    let logs = String::from_utf8(buffer.0.lock().expect("log buffer").clone()).expect("utf-8");
    // The log did capture the requests, with the key's id and name...
    assert!(logs.contains("key_id=1"), "logs:\n{logs}");
    assert!(
        logs.contains("key_name=\"acme\"") || logs.contains("key_name=acme"),
        "logs:\n{logs}"
    );
    assert!(
        logs.contains("endpoint=\"/labelling/img\"") || logs.contains("endpoint=/labelling/img"),
        "logs:\n{logs}"
    );
    // ...and never a key, nor its secret part: not in the log, not in the
    // metrics, not in any response body (errors included).
    let bodies: Vec<&str> = responses.iter().map(|(_, body)| body.as_str()).collect();
    let places = [
        ("the logs", logs.as_str()),
        ("the metrics", metrics.as_str()),
    ]
    .into_iter()
    .chain(bodies.iter().map(|body| ("a response body", *body)));
    for (place, text) in places {
        for secret in [&key, &revoked, &wrong, &other] {
            assert!(!text.contains(secret.as_str()), "a key leaked into {place}");
            assert!(
                !text.contains(&secret[3..]),
                "a key's secret part leaked into {place}"
            );
            assert!(
                !text.contains(&secret[3..20]),
                "part of a key leaked into {place}"
            );
        }
    }
}
