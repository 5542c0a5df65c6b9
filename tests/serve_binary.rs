//! The real binary: `photolabel keys create`, then `photolabel serve` on a
//! free loopback port, labelling a fixture photo through both endpoints (the
//! URL one served by a loopback HTTP server, with `--allow-private-urls`),
//! then SIGTERM for a clean exit. Standard library only.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::{create_key, fixture, free_port, http, upload, Serving};

/// Serves `bytes` as a JPEG to every connection, on a thread.
fn image_server(bytes: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind image server");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut stream = reader.into_inner();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&bytes);
        }
    });
    port
}

#[test]
fn serve_labels_uploads_and_urls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = create_key(dir.path(), "binary-test");
    let port = free_port();
    let mut serving = Serving::start(port, dir.path(), &["--allow-private-urls"], || {
        matches!(http(port, "GET", "/health", &[], b""), Ok((200, _)))
    });

    let (content_type, body) = upload(&fixture("kitchen.jpg"));
    let (status, answer) = http(
        port,
        "POST",
        "/labelling/img",
        &[("x-api-key", key.clone()), ("Content-Type", content_type)],
        &body,
    )
    .expect("upload");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""Room_Class":"kitchen""#), "{answer}");

    let image_port = image_server(fixture("facade.jpg"));
    let json = format!(r#"{{"url": "http://127.0.0.1:{image_port}/facade.jpg"}}"#);
    let (status, answer) = http(
        port,
        "POST",
        "/labelling/url",
        &[
            ("x-api-key", key.clone()),
            ("Content-Type", "application/json".into()),
        ],
        json.as_bytes(),
    )
    .expect("url");
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""Scene_Class1":"facade""#), "{answer}");

    let (status, answer) =
        http(port, "GET", "/credit", &[("x-api-key", key.clone())], b"").expect("credit");
    assert_eq!(status, 200);
    assert!(answer.contains(r#""calls_used":2"#), "{answer}");

    // SIGTERM: a clean exit.
    let pid = serving.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let stopped = Instant::now();
    loop {
        if let Some(status) = serving.0.try_wait().expect("status") {
            assert!(status.success(), "serve exited with {status}");
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
