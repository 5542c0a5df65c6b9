//! Hostile uploads: every file of `tests/fixtures/hostile/` (written by
//! `tools/hostile_corpus.py`; the folder's README says what each is) is
//! posted to `POST /labelling/img` with the real model, and gets its
//! documented response — 200 with the photo's labels, or the contract's 400
//! with its exact body. Never a 500, a panic or a hang, and memory stays
//! bounded: the decompression bomb is refused from its header.
//! (Its own test binary, so that its peak memory is its own.)

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::http::StatusCode;
use common::*;

/// The response a file must get.
#[derive(Debug, Clone, Copy)]
enum Expected {
    /// 200, labelled as the photo it was made from (all are the kitchen).
    Kitchen,
    /// 400 with the contract's "Please upload an image …" body.
    NotAnImage,
}

use Expected::{Kitchen, NotAnImage};

/// Every file in the folder and its documented response.
const CORPUS: &[(&str, Expected)] = &[
    ("zero_bytes.jpg", NotAnImage),
    ("truncated.jpg", NotAnImage),
    ("huge_65535x65535.jpg", NotAnImage),
    ("bomb_20000x20000.png", NotAnImage),
    ("cmyk.jpg", Kitchen),
    ("grayscale.jpg", Kitchen),
    ("progressive.jpg", Kitchen),
    ("arithmetic.jpg", NotAnImage),
    ("rgb16.png", Kitchen),
    ("palette.png", Kitchen),
    ("alpha.png", Kitchen),
    ("animated.png", Kitchen),
    ("html.jpg", NotAnImage),
    ("zip.jpg", NotAnImage),
    ("trailing_base.jpg", Kitchen),
    ("exif_orientation_1.jpg", Kitchen),
    ("exif_orientation_2.jpg", Kitchen),
    ("exif_orientation_3.jpg", Kitchen),
    ("exif_orientation_4.jpg", Kitchen),
    ("exif_orientation_5.jpg", Kitchen),
    ("exif_orientation_6.jpg", Kitchen),
    ("exif_orientation_7.jpg", Kitchen),
    ("exif_orientation_8.jpg", Kitchen),
];

/// How much trailing garbage follows the JPEG in the generated upload.
const TRAILING_GARBAGE: usize = 8 << 20;

/// Labels of the same upright photo may differ only by what re-encoding the
/// rotated pixels costs; ignoring the orientation moves them much more.
const ORIENTATION_TOLERANCE: f64 = 0.25;

fn hostile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hostile")
}

fn hostile(name: &str) -> Vec<u8> {
    std::fs::read(hostile_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

async fn post(app: &TestApp, key: &str, name: &str, data: &[u8]) -> (StatusCode, String) {
    let body = multipart_body("image", name, content_type(name), data);
    app.send(upload_request(Some(key), body)).await
}

/// `Output` of a 200 body.
fn output(body: &str) -> serde_json::Map<String, serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    value["Output"].as_object().expect("Output object").clone()
}

fn confidence(output: &serde_json::Map<String, serde_json::Value>, key: &str) -> f64 {
    output[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a numeric string: {output:?}"))
}

/// Deterministic bytes that look like nothing in particular, 0xFF and
/// marker-like pairs included.
fn garbage(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The process's peak resident memory (`VmHWM`), on Linux.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn the_corpus_table_lists_every_file() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(hostile_dir())
        .expect("hostile fixture folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("name")
        })
        .filter(|name| name != "README.md")
        .collect();
    let listed: BTreeSet<String> = CORPUS.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(on_disk, listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_get_their_documented_responses() {
    let app = AppBuilder::new().build_real_model().await;
    let key = app.create_key("acme", None, None).await;

    let mut failures = Vec::new();
    let mut kitchens = Vec::new();
    let mut uploads: Vec<(String, Vec<u8>, Expected)> = CORPUS
        .iter()
        .map(|&(name, expected)| (name.to_owned(), hostile(name), expected))
        .collect();
    // A valid JPEG followed by megabytes of garbage: decoders stop at the
    // end-of-image marker, so it is the photo.
    let mut trailing = hostile("trailing_base.jpg");
    trailing.extend(garbage(TRAILING_GARBAGE));
    uploads.push(("trailing_garbage.jpg (generated)".into(), trailing, Kitchen));

    for (name, data, expected) in &uploads {
        let (status, body) = post(&app, &key, name, data).await;
        match expected {
            NotAnImage => {
                if (status, body.as_str()) != (StatusCode::BAD_REQUEST, IMAGE_400) {
                    failures.push(format!("{name}: expected 400, got {status} {body}"));
                }
            }
            Kitchen => {
                if status != StatusCode::OK {
                    failures.push(format!("{name}: expected 200, got {status} {body}"));
                    continue;
                }
                let output = output(&body);
                if output["Image_Class"] != "indoor" || output["Room_Class"] != "kitchen" {
                    failures.push(format!("{name}: expected indoor/kitchen, got {body}"));
                }
                kitchens.push((name.clone(), output));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The orientation flag never changes the label: all eight display the
    // same upright photo, and get the same classes with (nearly) the same
    // confidences.
    let oriented: Vec<_> = kitchens
        .iter()
        .filter(|(name, _)| name.starts_with("exif_orientation_"))
        .collect();
    assert_eq!(oriented.len(), 8);
    let (_, upright) = oriented[0];
    for (name, output) in &oriented {
        let keys: Vec<&String> = output.keys().collect();
        assert_eq!(keys, upright.keys().collect::<Vec<_>>(), "{name}");
        for key in [
            "ConfidencePercent_Image_Class",
            "ConfidencePercent_Room_Class",
        ] {
            let (a, b) = (confidence(output, key), confidence(upright, key));
            assert!(
                (a - b).abs() <= ORIENTATION_TOLERANCE,
                "{name}: {key} {a} vs {b} for the upright photo"
            );
        }
    }
    // The tolerance is tight enough to notice an ignored tag: the rotated
    // pixels of orientation 6 read as stored (tag stripped) label differently.
    let stored_as_is = strip_exif(&hostile("exif_orientation_6.jpg"));
    let (status, body) = post(&app, &key, "rotated.jpg", &stored_as_is).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated = output(&body);
    let moved = [
        "ConfidencePercent_Image_Class",
        "ConfidencePercent_Room_Class",
    ]
    .iter()
    .any(|key| {
        rotated.get(*key).is_none()
            || (confidence(&rotated, key) - confidence(upright, key)).abs() > ORIENTATION_TOLERANCE
    });
    assert!(
        moved || rotated["Room_Class"] != upright["Room_Class"],
        "ignoring the orientation would go unnoticed: {rotated:?} vs {upright:?}"
    );

    // Bounded memory: the model, the 8 MB upload's copies and the decoded
    // photos fit far below what decoding the bomb (1.2 GB as RGB) or the
    // 65535×65535 JPEG (12.9 GB) would take.
    if let Some(peak) = peak_rss_bytes() {
        assert!(peak < 1 << 30, "peak resident memory {} MiB", peak >> 20);
    }
}

/// The JPEG without its APP1 (EXIF) segment.
fn strip_exif(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        let length = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
        if marker == 0xDA {
            break;
        }
        if marker != 0xE1 {
            out.extend_from_slice(&jpeg[i..i + 2 + length]);
        }
        i += 2 + length;
    }
    out.extend_from_slice(&jpeg[i..]);
    assert!(out.len() < jpeg.len(), "no EXIF segment found");
    out
}
