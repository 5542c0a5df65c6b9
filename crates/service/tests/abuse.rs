//! Slow and abusive clients: addresses that keep sending invalid keys are
//! locked out (429), and slow headers, stalled or trickled bodies and
//! oversized bodies are cut off — the latter over real TCP connections to
//! the real listener, since that is where the header timeout lives.
//!
//! Timeouts here are set to a second or two and each test asserts that the
//! cut-off happens; a generous guard (`GUARD`) only keeps a broken server
//! from hanging the test, it measures nothing.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use common::*;
use photolabel_service::config::ServeArgs;
use photolabel_service::error::{ADDRESS_LOCKED_OUT_DETAIL, INVALID_KEY_OUTPUT};
use photolabel_service::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tower::ServiceExt as _;

/// Longest a test waits for something the server must do; never reached
/// unless the server is broken. Well above the 1–2 s timeouts set here,
/// and below hyper's own 30 s header timeout and our default body (30 s)
/// and request (120 s) timeouts, so a setting that does not take effect
/// fails the test.
const GUARD: Duration = Duration::from_secs(15);

const LOCKED_429: &str =
    r#"{"detail":"Too many requests with an invalid API key from this address; retry later"}"#;

fn invalid_key_401() -> String {
    serde_json::json!({ "Output": INVALID_KEY_OUTPUT }).to_string()
}

fn from(address: &str, mut request: Request<Body>) -> Request<Body> {
    let peer: SocketAddr = address.parse().expect("socket address");
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

async fn send_full(app: &TestApp, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn lockout_app(limit: u32, window_s: u64) -> TestApp {
    AppBuilder::new()
        .args(|a| {
            a.bad_key_limit = limit;
            a.bad_key_window = window_s;
        })
        .build(FixedModel(indoor_probabilities()))
        .await
}

fn retry_after(headers: &HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds")
}

// ---- invalid keys from one address ----------------------------------------

#[tokio::test]
async fn repeated_invalid_keys_from_one_address_get_429() {
    let app = lockout_app(3, 60).await;
    let unused_valid_key = app.create_key("acme", None, None).await;
    const ATTACKER: &str = "203.0.113.9:40000";

    for n in 0..3 {
        let guess = format!("pl_guess-{n}");
        let (status, _, body) = send_full(
            &app,
            from(ATTACKER, upload(Some(&guess), &fixture("kitchen.jpg"))),
        )
        .await;
        assert_eq!(
            (status, body),
            (StatusCode::UNAUTHORIZED, invalid_key_401()),
            "{n}"
        );
    }
    // The limit is reached: every endpoint that takes a key refuses, with
    // the contract's 429 shape and a Retry-After within the window.
    for request in [
        upload(Some("pl_guess-4"), &fixture("kitchen.jpg")),
        url_request(Some("pl_guess-5"), &url_json("https://example.com/a.jpg")),
        get("/credit", Some("pl_guess-6")),
        // A header that is not a key at all counts the same.
        upload(Some(&"x".repeat(1000)), &fixture("kitchen.jpg")),
    ] {
        let (status, headers, body) = send_full(&app, from(ATTACKER, request)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, LOCKED_429)
        );
        assert!((1..=60).contains(&retry_after(&headers)));
    }
    assert_eq!(
        LOCKED_429,
        serde_json::json!({ "detail": ADDRESS_LOCKED_OUT_DETAIL }).to_string()
    );

    // Even a valid key that this server has never seen authenticate is
    // refused: the lockout answers without looking in the database (which
    // would have found this key).
    let (status, _, body) = send_full(
        &app,
        from(
            ATTACKER,
            upload(Some(&unused_valid_key), &fixture("kitchen.jpg")),
        ),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, LOCKED_429)
    );

    // Another port of the same address is the same client...
    let (status, _, _) = send_full(
        &app,
        from(
            "203.0.113.9:40001",
            upload(Some("pl_x"), &fixture("kitchen.jpg")),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // ...another address is not affected, and neither is a request without
    // a key (403: nothing to guess with).
    let (status, _, body) = send_full(
        &app,
        from(
            "198.51.100.1:40000",
            upload(Some("pl_y"), &fixture("kitchen.jpg")),
        ),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, invalid_key_401())
    );
    let (status, _, body) =
        send_full(&app, from(ATTACKER, upload(None, &fixture("kitchen.jpg")))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, MISSING_403)
    );
    // Nothing refused was counted.
    let (status, _, body) = send_full(
        &app,
        from(
            "198.51.100.1:40000",
            get("/credit", Some(&unused_valid_key)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#""calls_used":0"#), "{body}");
}

/// Shared-NAT customers: keys that have authenticated before still work
/// from a locked-out address; a key revoked since is refused once by the
/// database and from then on by the lockout.
#[tokio::test]
async fn a_key_that_authenticated_before_passes_its_address_lockout() {
    let app = lockout_app(2, 60).await;
    let customer = app.create_key("customer", None, None).await;
    let revoked_later = app.create_key("leaver", None, None).await;
    const NAT: &str = "192.0.2.50:1000";
    for key in [&customer, &revoked_later] {
        let (status, _, _) =
            send_full(&app, from(NAT, upload(Some(key), &fixture("kitchen.jpg")))).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Someone else behind the same address sends junk keys.
    for guess in ["pl_a", "pl_b"] {
        let (status, _, _) = send_full(
            &app,
            from(NAT, upload(Some(guess), &fixture("kitchen.jpg"))),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, _) = send_full(
        &app,
        from(NAT, upload(Some("pl_c"), &fixture("kitchen.jpg"))),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The customer's successes do not lift the lockout for the guesser.
    let (status, _, body) = send_full(
        &app,
        from(NAT, upload(Some(&customer), &fixture("kitchen.jpg"))),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, INDOOR_BODY));
    let (status, _, _) = send_full(
        &app,
        from(NAT, upload(Some("pl_d"), &fixture("kitchen.jpg"))),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    photolabel_service::cli::run(
        &*app.store,
        photolabel_service::KeysCommand::Revoke {
            id_or_name: "leaver".into(),
        },
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .await
    .expect("revoke");
    let (status, _, body) = send_full(
        &app,
        from(NAT, upload(Some(&revoked_later), &fixture("kitchen.jpg"))),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, invalid_key_401())
    );
    let (status, _, body) = send_full(
        &app,
        from(NAT, upload(Some(&revoked_later), &fixture("kitchen.jpg"))),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, LOCKED_429)
    );
}

#[tokio::test]
async fn the_lockout_ends_with_its_window() {
    let app = lockout_app(2, 1).await;
    const ADDRESS: &str = "203.0.113.77:5555";
    for _ in 0..2 {
        let (status, _, _) = send_full(
            &app,
            from(ADDRESS, upload(Some("pl_z"), &fixture("kitchen.jpg"))),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, headers, _) = send_full(
        &app,
        from(ADDRESS, upload(Some("pl_z"), &fixture("kitchen.jpg"))),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&headers), 1);
    // Waiting at least the window (a lower bound, so never flaky) ends it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = send_full(
        &app,
        from(ADDRESS, upload(Some("pl_z"), &fixture("kitchen.jpg"))),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_key_limit_zero_turns_the_lockout_off() {
    let app = lockout_app(0, 60).await;
    for n in 0..50 {
        let (status, _, _) = send_full(
            &app,
            from("203.0.113.1:1", upload(Some(&format!("pl_{n}")), b"x")),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{n}");
    }
    assert_eq!(app.state.bad_keys.tracked_addresses(), 0);
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The operator learns which address was locked out, for how long, and
/// never which keys it tried.
#[tokio::test]
async fn a_lockout_is_logged_with_the_address_never_the_key() {
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    // The current-thread runtime runs the handlers on this thread, where
    // this subscriber applies.
    let _logging = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let app = lockout_app(2, 60).await;
    let guesses = ["pl_secret-guess-number-one", "pl_secret-guess-number-two"];
    for guess in guesses {
        let (status, _, _) =
            send_full(&app, from("203.0.113.200:9", upload(Some(guess), b"x"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let logs = String::from_utf8(buffer.0.lock().expect("log buffer").clone()).expect("utf-8");
    let line = logs
        .lines()
        .find(|l| l.contains("too many invalid API keys"))
        .unwrap_or_else(|| panic!("no lockout line in:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("203.0.113.200"), "{line}");
    assert!(line.contains("lockout_s=60"), "{line}");
    for guess in guesses {
        assert!(!logs.contains(&guess[3..]), "a key leaked into the logs");
    }
}

// ---- the real listener ------------------------------------------------------

/// `photolabel serve` in-process on a free loopback port, with a stand-in
/// model; stops when dropped.
struct Listening {
    addr: SocketAddr,
    key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn listen(edit: impl FnOnce(&mut ServeArgs)) -> Listening {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = ServeArgs::defaults();
    args.store.data_dir = dir.path().to_path_buf();
    args.shutdown_grace = 1;
    edit(&mut args);
    let server = Server::start(&args, || Ok(vec![FixedModel(indoor_probabilities())]))
        .await
        .expect("start");
    server.state().worker.wait_loaded().await;
    let mut out = Vec::new();
    photolabel_service::cli::run(
        &*server.state().store,
        photolabel_service::KeysCommand::Create {
            name: "acme".into(),
            rate_limit: None,
            quota: None,
        },
        &mut out,
        &mut Vec::new(),
    )
    .await
    .expect("create key");
    let key = String::from_utf8(out).expect("utf-8").trim().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Listening {
        addr,
        key,
        stop: Some(stop),
        _dir: dir,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 response (its body by Content-Length): status, head
/// and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status code");
                let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
                return (status, head, body);
            }
        }
        let n = tokio::time::timeout(GUARD, stream.read(&mut chunk))
            .await
            .expect("the server answered")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the server closes the connection; returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match tokio::time::timeout(GUARD, stream.read(&mut chunk))
            .await
            .expect("the server closed the connection")
        {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn upload_head(addr: SocketAddr, key: &str, framing: &str) -> String {
    format!(
        "POST /labelling/img HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {key}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n{framing}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_over_tcp_lock_out_the_peer_address() {
    let server = listen(|a| a.bad_key_limit = 2).await;
    let body = multipart_body("image", "k.jpg", "image/jpeg", &fixture("kitchen.jpg"));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let head = upload_head(
            server.addr,
            "pl_wrong",
            &format!("Content-Length: {}\r\nConnection: close\r\n", body.len()),
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream.write_all(&body).await.expect("body");
        let (status, head, answer) = read_response(&mut stream).await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(answer, LOCKED_429);
            assert!(
                head.to_ascii_lowercase().contains("retry-after: "),
                "{head}"
            );
        }
    }
    assert_eq!(statuses, [401, 401, 429]);
}

// ---- slow clients -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let server = listen(|a| a.header_timeout = 1).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let received = read_until_closed(&mut stream).await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_after_the_header_timeout() {
    let server = listen(|a| a.header_timeout = 1).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // Half a request head, then nothing (slowloris).
    stream
        .write_all(
            format!(
                "POST /labelling/img HTTP/1.1\r\nHost: {}\r\nx-api-",
                server.addr
            )
            .as_bytes(),
        )
        .await
        .expect("partial head");
    let received = read_until_closed(&mut stream).await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = listen(|a| a.header_timeout = 1).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
        .await
        .expect("request");
    let (status, _, _) = read_response(&mut stream).await;
    assert_eq!(status, 200);
    // Kept alive, then idle: the next head is late, so the connection goes.
    let received = read_until_closed(&mut stream).await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let server = listen(|a| a.body_timeout = 1).await;
    let body = multipart_body("image", "k.jpg", "image/jpeg", &fixture("kitchen.jpg"));
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = upload_head(
        server.addr,
        &server.key,
        &format!("Content-Length: {}\r\n", body.len()),
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // A third of the body, then silence.
    stream
        .write_all(&body[..body.len() / 3])
        .await
        .expect("part of the body");
    let (status, _, answer) = read_response(&mut stream).await;
    assert_eq!(
        (status, answer.as_str()),
        (
            408,
            r#"{"detail":"The request body was not received in time"}"#
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_url_request_body_gets_408() {
    let server = listen(|a| a.body_timeout = 1).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "POST /labelling/url HTTP/1.1\r\nHost: {}\r\nx-api-key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"url\": \"http",
        server.addr, server.key
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let (status, _, answer) = read_response(&mut stream).await;
    assert_eq!(
        (status, answer.as_str()),
        (
            408,
            r#"{"detail":"The request body was not received in time"}"#
        )
    );
}

/// A body that never stalls long enough for the idle timeout, one byte at
/// a time, is still cut off by the whole-request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_by_the_request_timeout() {
    let server = listen(|a| {
        a.body_timeout = 30;
        a.request_timeout = 1;
    })
    .await;
    let body = multipart_body("image", "k.jpg", "image/jpeg", &fixture("kitchen.jpg"));
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = upload_head(
        server.addr,
        &server.key,
        &format!("Content-Length: {}\r\n", body.len()),
    );
    writer.write_all(head.as_bytes()).await.expect("head");
    let trickle = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut stream_half = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the response's body is complete (it is small).
    let (status, body) = loop {
        let n = tokio::time::timeout(GUARD, reader.read(&mut chunk))
            .await
            .expect("the server answered")
            .expect("read");
        assert!(n > 0, "closed without a response");
        stream_half.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&stream_half).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            if body.ends_with('}') {
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status");
                break (status, body.to_owned());
            }
        }
    };
    trickle.abort();
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            r#"{"detail":"The request took too long to process; retry shortly"}"#
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_oversize_body_gets_413_before_it_is_sent() {
    let server = listen(|a| a.max_body_bytes = 1024).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // The head alone; not one byte of the 50 MB it announces.
    let head = upload_head(server.addr, &server.key, "Content-Length: 50000000\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let (status, _, answer) = read_response(&mut stream).await;
    assert_eq!(
        (status, answer.as_str()),
        (
            413,
            r#"{"detail":"The request body is larger than the limit of 1024 bytes"}"#
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_crossing_the_limit_gets_413() {
    let server = listen(|a| a.max_body_bytes = 4096).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = upload_head(server.addr, &server.key, "Transfer-Encoding: chunked\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    // No length announced: chunks of 1000 bytes until just past the limit,
    // then the client waits for the answer (the body never ends).
    let body = multipart_body("image", "k.jpg", "image/jpeg", &fixture("kitchen.jpg"));
    for piece in body[..5000].chunks(1000) {
        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
        chunk.extend_from_slice(piece);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk).await.expect("chunk");
    }
    let (status, _, answer) = read_response(&mut stream).await;
    assert_eq!(
        (status, answer.as_str()),
        (
            413,
            r#"{"detail":"The request body is larger than the limit of 4096 bytes"}"#
        )
    );
}
