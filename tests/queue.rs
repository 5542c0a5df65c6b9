//! Back-filling through NATS JetStream with the real binary: `photolabel
//! enqueue`, two `photolabel worker` processes (one SIGKILLed midway and
//! restarted) and `photolabel collect`, against the NATS server at
//! 127.0.0.1:4222 (JetStream on) and a loopback HTTP server that serves the
//! fixture photos, broken files, 404s, slow answers and 503s.
//!
//! (`PHOTOLABEL_TEST_NATS=host:port` points them elsewhere.) Where no NATS
//! server with JetStream answers, each test prints
//! `skipping: …` and passes. Every test uses streams of its own (pid and a
//! counter in the name) and deletes them at the end, also when it fails.
//! Talking to NATS for the checks (stream info, delete) is a few lines of
//! its text protocol over a `TcpStream`; the rest is the standard library.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::{fixture, free_port, BIN};

/// The NATS server: `PHOTOLABEL_TEST_NATS` (`host:port`), or the
/// machine's own.
fn nats() -> SocketAddr {
    std::env::var("PHOTOLABEL_TEST_NATS")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4222)))
}

/// The fixtures with a known label: (file, field of the Output, value).
const PHOTOS: [(&str, &str, &str); 6] = [
    ("kitchen.jpg", "Room_Class", "kitchen"),
    ("facade.jpg", "Scene_Class1", "facade"),
    ("floorplan.jpg", "Image_Class", "other"),
    ("bathroom.jpg", "Room_Class", "bathroom"),
    ("bedroom.jpg", "Room_Class", "bedroom"),
    ("hall_corridor.jpg", "Room_Subclass", "hall_corridor"),
];

// ---------------------------------------------------------------- NATS ---

/// One JetStream API request over the NATS text protocol; the reply's
/// payload.
fn js_api(subject: &str, payload: &str) -> std::io::Result<String> {
    let address = nats();
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO
    write!(
        writer,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.photolabel_test 1\r\n\
         PUB {subject} _INBOX.photolabel_test {}\r\n{payload}\r\n",
        payload.len()
    )?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("NATS closed the connection"));
        }
        if line.starts_with("PING") {
            writer.write_all(b"PONG\r\n")?;
        } else if line.starts_with("-ERR") {
            return Err(std::io::Error::other(line.trim().to_owned()));
        } else if line.starts_with("MSG ") {
            let len: usize = line
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| std::io::Error::other("bad MSG line"))?;
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            return Ok(String::from_utf8_lossy(&body).into_owned());
        }
    }
}

/// Whether a NATS server with JetStream answers; why not otherwise.
fn nats_available() -> Result<(), String> {
    let address = nats();
    let stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut info = String::new();
    BufReader::new(stream)
        .read_line(&mut info)
        .map_err(|e| e.to_string())?;
    if !info.starts_with("INFO") {
        return Err(format!("not a NATS server: {}", info.trim()));
    }
    if !info.contains("\"jetstream\":true") {
        return Err("JetStream is not enabled".into());
    }
    Ok(())
}

macro_rules! require_nats {
    () => {
        if let Err(why) = nats_available() {
            println!("skipping: NATS not reachable at {} ({why})", nats());
            return;
        }
    };
}

/// Messages a stream holds (0 when it does not exist).
fn stream_messages(stream: &str) -> u64 {
    js_api(&format!("$JS.API.STREAM.INFO.{stream}"), "")
        .ok()
        .and_then(|reply| serde_json::from_str::<serde_json::Value>(&reply).ok())
        .and_then(|info| info["state"]["messages"].as_u64())
        .unwrap_or(0)
}

/// A pipeline's stream names, unique to this process and test; the streams
/// are deleted when it is dropped.
struct Pipeline {
    jobs: String,
    results: String,
}

impl Pipeline {
    fn new(tag: &str) -> Pipeline {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("PLTEST_{}_{n}_{tag}", std::process::id());
        Pipeline {
            jobs: format!("{base}_JOBS"),
            results: format!("{base}_RESULTS"),
        }
    }

    /// The flags every command of this pipeline takes.
    fn flags(&self) -> Vec<String> {
        vec![
            "--nats".into(),
            format!("nats://{}", nats()),
            "--jobs-stream".into(),
            self.jobs.clone(),
            "--results-stream".into(),
            self.results.clone(),
        ]
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for stream in [&self.jobs, &self.results] {
            let _ = js_api(&format!("$JS.API.STREAM.DELETE.{stream}"), "");
        }
    }
}

// ------------------------------------------------------- image server ---

/// A loopback HTTP server: `/photo/NAME` the fixture, `/slow/NAME` the
/// fixture after 1.5 s, `/broken/N` bytes that are no image, `/missing/N`
/// 404, `/flaky/NAME` 503 the first time and then the fixture, `/down/N`
/// always 503. Counts the connections it accepts.
struct ImageServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

fn respond(mut stream: TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn image_server() -> ImageServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind image server");
    let port = listener.local_addr().expect("addr").port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let photos: Arc<BTreeMap<String, Vec<u8>>> = Arc::new(
        PHOTOS
            .iter()
            .map(|(name, _, _)| (name.to_string(), fixture(name)))
            .collect(),
    );
    let flaky_seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let (photos, flaky_seen) = (photos.clone(), flaky_seen.clone());
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(stream);
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let stream = reader.into_inner();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let mut parts = path.trim_start_matches('/').splitn(2, '/');
                let (kind, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let name = rest.split('?').next().unwrap_or("");
                match kind {
                    "photo" | "slow" | "flaky" if photos.contains_key(name) => {
                        if kind == "slow" {
                            std::thread::sleep(Duration::from_millis(1500));
                        }
                        let first = kind == "flaky"
                            && flaky_seen
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(path.clone());
                        if first {
                            respond(stream, "503 Service Unavailable", b"try later");
                        } else {
                            respond(stream, "200 OK", &photos[name]);
                        }
                    }
                    "broken" => respond(stream, "200 OK", b"\xff\xd8\xff\xe0 this is not a JPEG"),
                    "down" => respond(stream, "503 Service Unavailable", b"down"),
                    _ => respond(stream, "404 Not Found", b"not found"),
                }
            });
        }
    });
    ImageServer { port, connections }
}

// ------------------------------------------------------------- jobs ---

/// What a job's result must be.
#[derive(Debug, Clone)]
enum Expect {
    Label(&'static str, &'static str),
    Error(&'static str),
}

/// 300 jobs: 150 photos, 30 slow photos, 15 that fail once with 503, 30
/// broken files, 30 404s, 45 always 503; as alternating JSON and CSV lines
/// with two malformed lines among them.
fn jobs(port: u16) -> (String, BTreeMap<String, Expect>) {
    let mut file = String::from("id,url\n");
    let mut expected = BTreeMap::new();
    for i in 0..300 {
        let id = format!("job-{i:03}");
        let (name, field, value) = PHOTOS[i % PHOTOS.len()];
        let (url, expect) = match i % 10 {
            0..=4 => (
                format!("http://127.0.0.1:{port}/photo/{name}?{i}"),
                Expect::Label(field, value),
            ),
            5 => (
                format!("http://127.0.0.1:{port}/slow/{name}?{i}"),
                Expect::Label(field, value),
            ),
            6 => (
                format!("http://127.0.0.1:{port}/broken/{i}.jpg"),
                Expect::Error("not_an_image"),
            ),
            7 => (
                format!("http://127.0.0.1:{port}/missing/{i}.jpg"),
                Expect::Error("not_found"),
            ),
            8 if i % 20 == 8 => (
                format!("http://127.0.0.1:{port}/flaky/{name}?{i}"),
                Expect::Label(field, value),
            ),
            _ => (
                format!("http://127.0.0.1:{port}/down/{i}.jpg"),
                Expect::Error("server_error"),
            ),
        };
        if i % 2 == 0 {
            file.push_str(&format!("{{\"id\": \"{id}\", \"url\": \"{url}\"}}\n"));
        } else {
            file.push_str(&format!("{id},{url}\n"));
        }
        if i == 100 {
            file.push_str("this line is not a job\n");
        }
        if i == 200 {
            file.push_str("{\"id\": 7}\n");
        }
        expected.insert(id, expect);
    }
    (file, expected)
}

// ---------------------------------------------------------- commands ---

fn run(args: &[String]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PHOTOLABEL_ALLOW_PRIVATE_URLS")
        .output()
        .expect("run photolabel")
}

fn enqueue(pipeline: &Pipeline, file: &Path) -> String {
    let mut args = vec!["enqueue".to_owned()];
    args.extend(pipeline.flags());
    args.push(file.display().to_string());
    let output = run(&args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "enqueue failed: {stderr}");
    stderr
}

/// `collect --expect N`: the lines, parsed.
fn collect(pipeline: &Pipeline, dir: &Path, expect: usize) -> Vec<serde_json::Value> {
    let out = dir.join("results.jsonl");
    let mut args = vec!["collect".to_owned()];
    args.extend(pipeline.flags());
    args.extend([
        "--out".into(),
        out.display().to_string(),
        "--expect".into(),
        expect.to_string(),
        "--timeout".into(),
        "240".into(),
    ]);
    let output = run(&args);
    assert!(
        output.status.success(),
        "collect failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(&out)
        .expect("results file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

/// A `photolabel worker` process, killed when dropped; its log in a file.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(pipeline: &Pipeline, dir: &Path, name: &str, extra: &[&str]) -> Worker {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut args = vec!["worker".to_owned()];
        args.extend(pipeline.flags());
        args.extend(
            [
                "--ack-wait",
                "5",
                "--max-deliver",
                "3",
                "--retry-backoff",
                "0.2",
                "--url-timeout",
                "5",
                "--shutdown-grace",
                "20",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(BIN)
            .args(&args)
            .env_remove("PHOTOLABEL_ALLOW_PRIVATE_URLS")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start worker");
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (bounded wait).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("status") {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "worker did not stop on SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `condition`, at most `limit`.
fn wait_for(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP GET on loopback: status and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

// ------------------------------------------------------------- tests ---

#[test]
fn backfill_survives_a_killed_worker_and_stores_each_job_once() {
    require_nats!();
    let pipeline = Pipeline::new("backfill");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = image_server();
    let (file, expected) = jobs(server.port);
    let jobs_file = dir.path().join("jobs.txt");
    std::fs::write(&jobs_file, file).expect("jobs file");

    // Enqueued twice: 300 jobs, not 600; the malformed lines are named.
    let first = enqueue(&pipeline, &jobs_file);
    assert!(first.contains("enqueued 300 jobs"), "{first}");
    assert!(first.contains("line 103: skipped"), "{first}");
    assert!(first.contains("line 204: skipped"), "{first}");
    assert!(first.contains("2 malformed lines skipped"), "{first}");
    let second = enqueue(&pipeline, &jobs_file);
    assert!(
        second.contains("enqueued 0 jobs; 300 already in the stream"),
        "{second}"
    );
    assert_eq!(stream_messages(&pipeline.jobs), 300);

    let metrics_port = free_port();
    let metrics_bind = format!("127.0.0.1:{metrics_port}");
    let mut a = Worker::start(
        &pipeline,
        dir.path(),
        "worker-a",
        &["--allow-private-urls", "--metrics-bind", &metrics_bind],
    );
    let mut b = Worker::start(&pipeline, dir.path(), "worker-b", &["--allow-private-urls"]);

    // SIGKILL one worker midway, with jobs in its hands, and restart it.
    wait_for("a third of the results", Duration::from_secs(240), || {
        stream_messages(&pipeline.results) >= 100
    });
    b.child.kill().expect("SIGKILL");
    b.child.wait().expect("reap");
    let killed_at = stream_messages(&pipeline.results);
    assert!(killed_at < 300, "the kill came too late to matter");
    println!("worker b SIGKILLed with {killed_at} of 300 results stored");
    let mut b = Worker::start(
        &pipeline,
        dir.path(),
        "worker-b-restarted",
        &["--allow-private-urls"],
    );

    let lines = collect(&pipeline, dir.path(), 300);
    assert_eq!(lines.len(), 300, "one line per job");
    let mut seen = HashSet::new();
    for line in &lines {
        let id = line["id"].as_str().expect("id").to_owned();
        assert!(seen.insert(id.clone()), "{id} twice");
        match &expected[&id] {
            Expect::Label(field, value) => {
                assert_eq!(line["Output"][field], *value, "{line}");
                assert!(line.get("error").is_none(), "{line}");
            }
            Expect::Error(kind) => {
                assert_eq!(line["error"]["kind"], *kind, "{line}");
                assert!(line.get("Output").is_none(), "{line}");
            }
        }
    }
    assert_eq!(seen.len(), 300);
    // The results stream itself holds each id once (message id = job id).
    assert_eq!(stream_messages(&pipeline.results), 300);
    // Every job was acked: the work queue is empty.
    assert_eq!(stream_messages(&pipeline.jobs), 0);

    let (status, health) = http_get(metrics_port, "/health").expect("health");
    assert_eq!(status, 200, "{health}");
    let (status, metrics) = http_get(metrics_port, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    for name in [
        "photolabel_queue_jobs_done_total",
        "photolabel_queue_jobs_failed_total",
        "photolabel_queue_jobs_in_flight 0",
        "photolabel_queue_lag 0",
    ] {
        assert!(metrics.contains(name), "{name} missing from {metrics}");
    }

    // SIGTERM: both stop cleanly.
    let status = a.terminate();
    assert!(status.success(), "worker a: {status}: {}", a.log());
    let status = b.terminate();
    assert!(status.success(), "worker b: {status}: {}", b.log());
}

#[test]
fn loopback_urls_are_refused_without_allow_private_urls() {
    require_nats!();
    let pipeline = Pipeline::new("private");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = image_server();
    let port = server.port;
    let mut file = String::new();
    let urls = [
        format!("http://127.0.0.1:{port}/photo/kitchen.jpg"),
        format!("http://localhost:{port}/photo/facade.jpg"),
        format!("http://[::1]:{port}/photo/kitchen.jpg"),
        format!("http://2130706433:{port}/photo/kitchen.jpg"),
        format!("http://127.0.0.1:{port}/missing/1.jpg"),
        format!("http://127.0.0.1:{port}/down/1.jpg"),
    ];
    for i in 0..30 {
        file.push_str(&format!("private-{i},{}\n", urls[i % urls.len()]));
    }
    let jobs_file = dir.path().join("jobs.csv");
    std::fs::write(&jobs_file, file).expect("jobs file");
    let first = enqueue(&pipeline, &jobs_file);
    assert!(first.contains("enqueued 30 jobs"), "{first}");

    let mut worker = Worker::start(&pipeline, dir.path(), "worker", &[]);
    let lines = collect(&pipeline, dir.path(), 30);
    assert_eq!(lines.len(), 30);
    for line in &lines {
        assert_eq!(line["error"]["kind"], "url_refused", "{line}");
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        0,
        "no connection may reach the loopback server"
    );
    let status = worker.terminate();
    assert!(status.success(), "{status}: {}", worker.log());
}
