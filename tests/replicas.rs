//! Several `photolabel serve` replicas on one PostgreSQL database, as
//! processes: keys created from anywhere work everywhere, a quota and a
//! rate limit hold across replicas exactly, a revoked key is refused by
//! every replica at once, a replica killed under load loses no count, and a
//! database that goes away turns into 503s and comes back by itself.
//!
//! The database is `PHOTOLABEL_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test works in a schema
//! of its own, made and dropped with `psql`. Where the server does not
//! answer, the tests print why and skip.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{create_key_with, exchange, fixture, free_port, http, upload, Serving, BIN};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The tests start three model processes each; one at a time keeps the
/// two-core machines from timing out.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn admin_url() -> String {
    std::env::var("PHOTOLABEL_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("psql not runnable: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A schema of the test database, dropped when the test ends.
struct Schema {
    name: String,
}

impl Schema {
    /// `None`, with the reason printed, where PostgreSQL does not answer.
    fn create(test: &str) -> Option<Schema> {
        let name = format!("photolabel_{test}_{}", std::process::id());
        match psql(
            &admin_url(),
            &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"),
        ) {
            Ok(_) => Some(Schema { name }),
            Err(e) => {
                println!("skipping: PostgreSQL at {} is not usable: {e}", admin_url());
                None
            }
        }
    }

    /// The URL a replica gets: the test database, this schema.
    fn url(&self) -> String {
        self.url_via(None)
    }

    /// The same through another port on loopback (a proxy).
    fn url_via(&self, port: Option<u16>) -> String {
        let mut url = admin_url();
        if let Some(port) = port {
            url = url.replace(":5432/", &format!(":{port}/"));
        }
        format!("{url}?options[search_path]={}", self.name)
    }

    fn query(&self, sql: &str) -> String {
        psql(
            &admin_url(),
            &format!("SET search_path = {}; {sql}", self.name),
        )
        .expect("query")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = psql(
            &admin_url(),
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

fn ready(port: u16) -> bool {
    matches!(http(port, "GET", "/health", &[], b""), Ok((200, _)))
}

/// `n` replicas on `url`, each with one model thread.
fn replicas(n: usize, url: &str, dir: &std::path::Path) -> Vec<(u16, Serving)> {
    (0..n)
        .map(|_| {
            let port = free_port();
            let serving = Serving::start(
                port,
                dir,
                &[
                    "--database-url",
                    url,
                    "--replicas",
                    "1",
                    "--threads",
                    "1",
                    "--queue-capacity",
                    "128",
                    // Revoked keys are sent on purpose below.
                    "--bad-key-limit",
                    "0",
                ],
                || ready(port),
            );
            (port, serving)
        })
        .collect()
}

fn key(dir: &std::path::Path, url: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["--database-url", url];
    args.extend_from_slice(extra);
    create_key_with(dir, name, &args)
}

/// Uploads the street photo (the smallest fixture) to `port`.
fn label(port: u16, key: &str) -> std::io::Result<support::Answer> {
    let (content_type, body) = upload(&fixture("street.jpg"));
    exchange(
        port,
        "POST",
        "/labelling/img",
        &[
            ("x-api-key", key.to_owned()),
            ("Content-Type", content_type),
        ],
        &body,
    )
}

/// `count` uploads at once, spread round-robin over `ports`, each on its own
/// thread; the statuses and `Retry-After` values, in no particular order.
fn burst(ports: &[u16], key: &str, count: usize) -> Vec<(u16, Option<String>)> {
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let port = ports[i % ports.len()];
            let key = key.to_owned();
            std::thread::spawn(move || {
                let answer = label(port, &key).expect("upload");
                (
                    answer.status,
                    answer.header("retry-after").map(str::to_owned),
                )
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect()
}

fn calls_used(port: u16, key: &str) -> u64 {
    let (status, body) = http(
        port,
        "GET",
        "/credit",
        &[("x-api-key", key.to_owned())],
        b"",
    )
    .expect("credit");
    assert_eq!(status, 200, "{body}");
    let usage: serde_json::Value = serde_json::from_str(&body).expect("json");
    usage["calls_used"].as_u64().expect("calls_used")
}

#[test]
fn three_replicas_share_keys_quotas_rate_limits_and_revocation() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(schema) = Schema::create("shared") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = schema.url();
    // The first replica creates the tables; the key is made from outside.
    let servers = replicas(3, &url, dir.path());
    let ports: Vec<u16> = servers.iter().map(|(port, _)| *port).collect();

    // A key with a quota of 50, created with `keys create`: 120 concurrent
    // requests over the three replicas get exactly 50 labels.
    let quota = key(dir.path(), &url, "quota", &["--quota", "50"]);
    let statuses = burst(&ports, &quota, 120);
    let ok_quota = statuses.iter().filter(|(s, _)| *s == 200).count();
    let refused = statuses.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!((ok_quota, refused), (50, 70), "{statuses:?}");
    for &port in &ports {
        assert_eq!(calls_used(port, &quota), 50, "replica {port}");
    }
    assert_eq!(
        schema
            .query("SELECT calls FROM key_usage JOIN api_keys ON id = key_id WHERE name = 'quota'"),
        "50"
    );

    // 30 a minute, 60 requests at once over the three replicas: exactly 30
    // labelled, the rest told when to come back.
    let limited = key(dir.path(), &url, "limited", &["--rate-limit", "30/min"]);
    let statuses = burst(&ports, &limited, 60);
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 30, "{statuses:?}");
    for (status, retry_after) in statuses.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 429);
        let wait: u64 = retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=2).contains(&wait), "Retry-After {wait}");
    }

    // Revoked from outside: the very next request to every replica is 401.
    let doomed = key(dir.path(), &url, "doomed", &[]);
    for &port in &ports {
        assert_eq!(label(port, &doomed).expect("upload").status, 200);
    }
    let revoked = std::process::Command::new(BIN)
        .args(["keys", "revoke", "doomed", "--database-url", &url])
        .output()
        .expect("keys revoke");
    assert!(revoked.status.success(), "{revoked:?}");
    let at = Instant::now();
    for &port in &ports {
        let answer = label(port, &doomed).expect("upload");
        assert_eq!(answer.status, 401, "replica {port}: {}", answer.body);
    }
    assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    println!(
        "quota 50: {ok_quota} × 200 of 120; 30/min: 30 × 200 of 60; revoked: 401 on all three within {:?}",
        at.elapsed()
    );
}

#[test]
fn a_replica_killed_under_load_loses_no_count() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(schema) = Schema::create("killed") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = schema.url();
    let mut servers = replicas(3, &url, dir.path());
    let ports: Vec<u16> = servers.iter().map(|(port, _)| *port).collect();
    let key = key(dir.path(), &url, "load", &[]);

    // Six clients, each sending 25 requests round-robin over the replicas.
    let received = Arc::new(AtomicUsize::new(0));
    let failed_on_victim = Arc::new(AtomicUsize::new(0));
    let after_kill_on_survivors = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let victim = ports[2];
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (ports, key) = (ports.clone(), key.clone());
            let (received, failed, after, killed) = (
                received.clone(),
                failed_on_victim.clone(),
                after_kill_on_survivors.clone(),
                killed.clone(),
            );
            std::thread::spawn(move || {
                for i in 0..25 {
                    let port = ports[(c + i) % ports.len()];
                    let was_killed = killed.load(Ordering::SeqCst);
                    match label(port, &key) {
                        Ok(answer) if answer.status == 200 => {
                            received.fetch_add(1, Ordering::SeqCst);
                            if was_killed && port != victim {
                                after.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Ok(answer) if port != victim => {
                            panic!("a survivor answered {}: {}", answer.status, answer.body)
                        }
                        // The victim's requests around the kill: cut off,
                        // refused, or an empty answer.
                        _ => {
                            assert_eq!(port, victim, "a survivor did not answer");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    // SIGKILL once a third of the work is done.
    while received.load(Ordering::SeqCst) < 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.store(true, Ordering::SeqCst);
    servers[2].1 .0.kill().expect("SIGKILL");
    for client in clients {
        client.join().expect("client");
    }
    let received = received.load(Ordering::SeqCst) as u64;
    let lost = failed_on_victim.load(Ordering::SeqCst) as u64;
    assert!(
        after_kill_on_survivors.load(Ordering::SeqCst) > 0,
        "the survivors labelled after the kill"
    );
    // Every 200 a client saw is in the ledger; the ledger may also hold a
    // call the victim committed but could not answer before it died.
    let ledger = calls_used(ports[0], &key);
    println!(
        "SIGKILL under load: {received} × 200 received, {lost} requests cut off, ledger {ledger}"
    );
    assert!(
        ledger >= received && ledger <= received + lost,
        "ledger {ledger}, 200s received {received}, requests cut off {lost}"
    );
    servers.truncate(2);
}

/// A TCP proxy to PostgreSQL that can cut every connection and refuse new
/// ones, then let them through again: the database "going away".
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn to_postgres() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", 5432)) else {
                    continue;
                };
                let mut open = open2.lock().unwrap_or_else(|p| p.into_inner());
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        open.push(clone);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, up, open }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_database_that_goes_away_gives_503s_then_recovers_without_a_restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(schema) = Schema::create("cut") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = Proxy::to_postgres();
    let url = schema.url_via(Some(proxy.port));
    let mut servers = replicas(1, &url, dir.path());
    let port = servers[0].0;
    let key = key(dir.path(), &schema.url(), "steady", &[]);
    assert_eq!(label(port, &key).expect("upload").status, 200);

    proxy.cut();
    // Health says why; a call gets the JSON 503 with Retry-After, in
    // bounded time (the pool's acquire timeout), never a hang or a 500.
    let at = Instant::now();
    let (status, body) = http(port, "GET", "/health", &[], b"").expect("health");
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "database_unreachable", "{body}");
    assert!(health["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let answer = label(port, &key).expect("upload");
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.body,
        r#"{"detail":"The key database cannot be reached; retry shortly"}"#
    );
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert!(at.elapsed() < Duration::from_secs(15), "{:?}", at.elapsed());
    println!(
        "database cut: /health 503 and a call 503 within {:?}",
        at.elapsed()
    );

    proxy.restore();
    let at = Instant::now();
    while !ready(port) {
        assert!(at.elapsed() < Duration::from_secs(30), "never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("database back: ready again after {:?}", at.elapsed());
    assert_eq!(label(port, &key).expect("upload").status, 200);
    assert_eq!(calls_used(port, &key), 2);
    // Still the same process: it recovered, it was not restarted.
    assert!(servers[0].1 .0.try_wait().expect("status").is_none());
    servers.clear();
}
