//! What the tests that run the real `photolabel` binary share: a free port,
//! a key, and a `serve` process that is killed when the test ends (also when
//! it panics).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_photolabel");

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `photolabel keys create --name NAME`: the key, which is all it prints.
pub fn create_key(data_dir: &Path, name: &str) -> String {
    let created = Command::new(BIN)
        .args(["keys", "create", "--name", name, "--data-dir"])
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
