//! Crash safety of the usage ledger: the real `photolabel serve`, under
//! concurrent uploads, is killed with SIGKILL and restarted, several times.
//!
//! After every kill the database must be sound (`PRAGMA integrity_check`
//! is `ok`) and the ledger must agree with what the clients saw: a 200 is
//! sent only after its count is committed, so the ledger holds at least
//! every 200 received, and at most those plus the requests that were cut
//! off in flight by the kill (their count may or may not have been
//! committed). The restarted server must report the same count on
//! `/credit`. The rounds' table is printed (`-- --nocapture`);
//! `PHOTOLABEL_CRASH_ROUNDS` sets how many (default 5).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use photolabel_service::store::{SqliteStore, Store as _, DATABASE_FILE};

mod support;
use support::{create_key, free_port, Serving};

/// Concurrent clients; below the default queue capacity (32), so the
/// server answers 200 and never 503 while it is up.
const CLIENTS: usize = 6;
const BOUNDARY: &str = "crash-safety-boundary";

fn upload_body() -> Vec<u8> {
    let photo = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/photos/kitchen.jpg"),
    )
    .expect("fixture photo");
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"k.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend(photo);
    body.extend(format!("\r\n--{BOUNDARY}--\r\n").into_bytes());
    body
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    /// No connection: the server was already gone, nothing reached it.
    Refused,
    /// Connected, but no whole response: cut off by the kill.
    Cut,
}

/// One request over a fresh connection.
fn request(port: u16, head: &str, body: &[u8]) -> Outcome {
    let mut stream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream,
        Err(_) => return Outcome::Refused,
    };
    // A guard against a hung server, not a measurement.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        return Outcome::Cut;
    }
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        if e.kind() != ErrorKind::ConnectionReset {
            panic!("reading a response: {e}");
        }
        return Outcome::Cut;
    }
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Cut;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .expect("responses carry a Content-Length");
    if body.len() < length {
        return Outcome::Cut;
    }
    Outcome::Status(
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code"),
    )
}

fn get(port: u16, path: &str, key: Option<&str>) -> Outcome {
    let key = key
        .map(|k| format!("x-api-key: {k}\r\n"))
        .unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{key}\r\n");
    request(port, &head, b"")
}

/// `calls_used` as `GET /credit` reports it.
fn calls_used_on_credit(port: u16, key: &str) -> u64 {
    let body = get_body(port, "/credit", key);
    let credit: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    credit["calls_used"].as_u64().expect("calls_used")
}

fn get_body(port: u16, path: &str, key: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nx-api-key: {key}\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// `serve` on PORT over DATA_DIR, once `/health` answers 200.
fn start(data_dir: &Path, port: u16) -> Serving {
    Serving::start(port, data_dir, &["--log", "warn"], || {
        get(port, "/health", None) == Outcome::Status(200)
    })
}

/// What the database says after a crash: its integrity check, the key's
/// total and the sum of its per-endpoint counts.
fn read_ledger(runtime: &tokio::runtime::Runtime, data_dir: &Path) -> (Vec<String>, u64, u64) {
    runtime.block_on(async {
        let store = SqliteStore::open_file(&data_dir.join(DATABASE_FILE))
            .await
            .expect("open the database after the kill");
        let integrity = store.integrity_check().await.expect("integrity check");
        let usage = store.usage(1).await.expect("usage").expect("key 1");
        store.close().await.expect("close");
        (
            integrity,
            usage.calls_used,
            usage.calls_by_endpoint.values().sum(),
        )
    })
}

#[derive(Debug, Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
}

impl Tally {
    fn count(&self, name: &str) -> u64 {
        self.outcomes.get(name).copied().unwrap_or(0)
    }
}

#[test]
fn ledger_survives_sigkill_under_load() {
    let rounds: u64 = std::env::var("PHOTOLABEL_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_path_buf();
    let key = create_key(&data_dir, "crash");
    let body = Arc::new(upload_body());

    println!(
        "\n| round | /credit after restart | 200s received | other statuses | cut by the kill | ledger after the kill | allowed | integrity_check |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ledger = 0u64;
    for round in 1..=rounds {
        let port = free_port();
        let mut serving = start(&data_dir, port);
        // The restarted server reports what the database holds.
        let credit = calls_used_on_credit(port, &key);
        assert_eq!(
            credit, ledger,
            "round {round}: /credit after the restart differs from the database"
        );

        let tally = Arc::new(Mutex::new(Tally::default()));
        let killed = Arc::new(AtomicBool::new(false));
        let head = format!(
            "POST /labelling/img HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             x-api-key: {key}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (tally, killed, body, head) =
                    (tally.clone(), killed.clone(), body.clone(), head.clone());
                std::thread::spawn(move || loop {
                    if killed.load(Ordering::SeqCst) {
                        return;
                    }
                    let name = match request(port, &head, &body) {
                        Outcome::Status(status) => status.to_string(),
                        Outcome::Refused => "refused".to_owned(),
                        Outcome::Cut => "cut".to_owned(),
                    };
                    *tally
                        .lock()
                        .expect("tally")
                        .outcomes
                        .entry(name)
                        .or_default() += 1;
                })
            })
            .collect();

        // Kill at a different point each round, well inside the load.
        let kill_after = 10 + 7 * round;
        let loading = Instant::now();
        while tally.lock().expect("tally").count("200") < kill_after {
            assert!(
                loading.elapsed() < Duration::from_secs(300),
                "round {round}: no progress: {:?}",
                tally.lock().expect("tally").outcomes
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Clients start no new request from here on; what they have sent
        // is either answered before the kill or cut off by it.
        killed.store(true, Ordering::SeqCst);
        serving.0.kill().expect("SIGKILL");
        serving.0.wait().expect("reap");
        for client in clients {
            client.join().expect("client");
        }

        let tally = tally.lock().expect("tally");
        let ok = tally.count("200");
        let cut = tally.count("cut");
        let other: BTreeMap<_, _> = tally
            .outcomes
            .iter()
            .filter(|(name, _)| !["200", "cut", "refused"].contains(&name.as_str()))
            .collect();
        let (integrity, calls_used, by_endpoint) = read_ledger(&runtime, &data_dir);
        let (low, high) = (ledger + ok, ledger + ok + cut);
        println!(
            "| {round} | {credit} | {ok} | {} | {cut} | {calls_used} | {low}–{high} | {} |",
            if other.is_empty() {
                "none".to_owned()
            } else {
                format!("{other:?}")
            },
            integrity.join(" "),
        );
        assert_eq!(integrity, ["ok"], "round {round}");
        assert!(
            other.is_empty(),
            "round {round}: unexpected statuses {other:?}"
        );
        assert_eq!(
            calls_used, by_endpoint,
            "round {round}: total and per-endpoint counts differ"
        );
        assert!(
            (low..=high).contains(&calls_used),
            "round {round}: the ledger says {calls_used}, the clients received {ok} 200s \
             (+{cut} cut off) on top of {ledger}"
        );
        ledger = calls_used;
    }

    // A last restart: the server comes back with the final count and stops
    // cleanly.
    let port = free_port();
    let mut serving = start(&data_dir, port);
    let credit = calls_used_on_credit(port, &key);
    assert_eq!(credit, ledger, "/credit after the last restart");
    println!("\nafter the last restart: /credit says {credit} calls, the database {ledger}");
    let pid = serving.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let status = serving.0.wait().expect("wait");
    assert!(status.success(), "serve exited with {status}");
}
