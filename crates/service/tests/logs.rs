//! The request log names the key by id and name, never by the key itself.
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
async fn the_key_never_appears_in_logs() {
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
        .args(|a| a.allow_private_urls = true)
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

    let statuses = [
        app.send(upload(Some(&key), &fixture("kitchen.jpg")))
            .await
            .0,
        app.send(url_request(Some(&key), &url_json(&server.url("/k.jpg"))))
            .await
            .0,
        app.send(upload(Some(&key), b"not an image")).await.0,
        app.send(upload(Some(&key), b"rate limited")).await.0,
        app.send(upload(Some(&revoked), &fixture("kitchen.jpg")))
            .await
            .0,
        app.send(upload(Some(&format!("{key}x")), &fixture("kitchen.jpg")))
            .await
            .0,
        app.send(get("/credit", Some(&key))).await.0,
    ];
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
        ]
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
    // ...and never a key, nor its secret part.
    for secret in [&key, &revoked] {
        assert!(
            !logs.contains(secret.as_str()),
            "a key leaked into the logs"
        );
        assert!(
            !logs.contains(&secret[3..]),
            "a key's secret part leaked into the logs"
        );
        assert!(
            !logs.contains(&secret[3..20]),
            "part of a key leaked into the logs"
        );
    }
}
