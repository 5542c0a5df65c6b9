//! CI's share of the fuzzing: every committed corpus file of every fuzz
//! target (`fuzz/corpus/<target>/`, seeds plus what fuzzing found
//! interesting, and `fuzz/regressions/<target>/`, the inputs that once
//! crashed) goes through the very function the target calls — `fuzz/src/lib.rs`
//! is compiled into this test — on stable, without libFuzzer.
//!
//! A panic anywhere fails the test, including one that the production code
//! catches and turns into a 400 (`prepare` guards the decoders with
//! `catch_unwind`): under libFuzzer such a panic aborts, so it counts here
//! too.

#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use axum::http::StatusCode;

type Target = fn(&[u8]) -> Result<(), StatusCode>;

thread_local! {
    /// Panics on this thread since the last reset, caught or not.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

/// Runs one input; `Err` with the number of panics if any happened, caught
/// or not.
fn run_one(data: &[u8], run: Target) -> Result<Result<(), StatusCode>, usize> {
    count_panics();
    PANICS.with(|p| p.set(0));
    let outcome = std::panic::catch_unwind(|| run(data));
    let panics = PANICS.with(|p| p.get());
    match outcome {
        Ok(result) if panics == 0 => Ok(result),
        _ => Err(panics.max(1)),
    }
}

/// Replays the target's corpus and regressions; returns how many inputs
/// were accepted and how many refused with each status.
fn replay(target: &str, run: Target) -> (usize, Vec<StatusCode>) {
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(
        corpus.len() >= 5,
        "fuzz/corpus/{target} has {} files; the seeds are committed",
        corpus.len()
    );
    let inputs = corpus
        .into_iter()
        .chain(files(&fuzz_dir().join("regressions").join(target)));
    let mut accepted = 0;
    let mut refused = Vec::new();
    for path in inputs {
        let data = std::fs::read(&path).expect("corpus file");
        match run_one(&data, run) {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(status)) => refused.push(status),
            Err(panics) => panic!("{} panicked ({panics} panic(s))", path.display()),
        }
    }
    (accepted, refused)
}

#[test]
fn a_panic_is_noticed_even_when_caught() {
    fn quiet(_: &[u8]) -> Result<(), StatusCode> {
        Ok(())
    }
    fn caught(_: &[u8]) -> Result<(), StatusCode> {
        let _ = std::panic::catch_unwind(|| panic!("a decoder bug, caught"));
        Err(StatusCode::BAD_REQUEST)
    }
    fn uncaught(_: &[u8]) -> Result<(), StatusCode> {
        panic!("a decoder bug")
    }
    assert_eq!(run_one(b"x", quiet), Ok(Ok(())));
    assert_eq!(run_one(b"x", caught), Err(1));
    assert_eq!(run_one(b"x", uncaught), Err(1));
}

#[test]
fn decode_corpus_replays_without_panics() {
    let (accepted, refused) = replay("decode", harness::decode);
    // The seeds include real photos and broken files: both paths run.
    assert!(accepted > 0 && !refused.is_empty());
    assert!(refused.iter().all(|s| *s == StatusCode::BAD_REQUEST));
}

#[test]
fn multipart_corpus_replays_without_panics() {
    let (accepted, refused) = replay("multipart", harness::multipart);
    assert!(accepted > 0, "no seed reaches a prepared photo");
    for status in [StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY] {
        assert!(
            refused.contains(&status),
            "no seed is refused with {status}"
        );
    }
}

#[test]
fn url_json_corpus_replays_without_panics() {
    let (accepted, refused) = replay("url_json", harness::url_json);
    assert!(accepted > 0, "no seed passes the URL check");
    for status in [StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY] {
        assert!(
            refused.contains(&status),
            "no seed is refused with {status}"
        );
    }
}
