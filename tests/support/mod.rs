//! What the tests that run the real `photolabel` binary share: a free port,
//! a key, and a `serve` process that is killed when the test ends (also when
//! it panics). Not every test binary uses every helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_photolabel");

/// A photo of `tests/fixtures/photos`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/photos")
        .join(name);
    std::fs::read(path).expect("fixture photo")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `photolabel keys create --name NAME`: the key, which is all it prints.
pub fn create_key(data_dir: &Path, name: &str) -> String {
    create_key_with(data_dir, name, &[])
}

/// `photolabel keys create --name NAME ARGS…` (`--rate-limit`, `--quota`).
pub fn create_key_with(data_dir: &Path, name: &str, args: &[&str]) -> String {
    let created = Command::new(BIN)
        .args(["keys", "create", "--name", name])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run keys create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(key.starts_with("pl_"), "stdout is the key alone: {key:?}");
    key
}

/// A running `photolabel serve`.
pub struct Serving(pub Child);

impl Serving {
    /// Starts `photolabel serve --bind 127.0.0.1:PORT --data-dir DIR ARGS…`
    /// and waits until `ready()` holds. The wait is a condition (the model
    /// loads first), bounded generously so a broken server fails the test
    /// instead of hanging it.
    pub fn start(port: u16, data_dir: &Path, args: &[&str], ready: impl Fn() -> bool) -> Serving {
        let mut serving = Serving(
            Command::new(BIN)
                .args([
                    "serve",
                    "--bind",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                ])
                .arg(data_dir)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start serve"),
        );
        let started = Instant::now();
        while !ready() {
            assert!(
                serving.0.try_wait().expect("status").is_none(),
                "serve exited early"
            );
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "server never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        serving
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 exchange over a fresh connection; returns status and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    exchange(port, method, path, headers, body).map(|r| (r.status, r.body))
}

/// A response: status, the head (status line and headers) and the body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Like [`http`], with the response's headers.
pub fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    Ok(Answer { status, head, body })
}

/// A `multipart/form-data` upload of `photo` in the field `image`: the
/// content type and the body.
pub fn upload(photo: &[u8]) -> (String, Vec<u8>) {
    let boundary = "photolabel-test-7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(photo);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
