//! `photolabel listing` end to end: folders and `--group-by` listings, the
//! CSV and JSON shapes, and — where the shared data set is beside this
//! checkout — the cover photo of every Houses-dataset house in `val`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/photos").join(name)
}

fn listing(args: &[&str], paths: &[&Path]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_photolabel"))
        .env("PHOTOLABEL_LOG", "warn")
        .arg("listing")
        .args(args)
        .args(paths)
        .output()
        .expect("photolabel runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn copy(from: &Path, dir: &Path, name: &str) {
    std::fs::copy(from, dir.join(name)).expect("copy fixture");
}

#[test]
fn a_folder_is_a_listing_in_csv_with_its_order_cover_and_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let house = dir.path().join("house-12");
    std::fs::create_dir(&house).expect("mkdir");
    copy(&fixture("kitchen.jpg"), &house, "a-kitchen.jpg");
    copy(&fixture("facade.jpg"), &house, "b-front.jpg");
    copy(&fixture("kitchen.jpg"), &house, "c-kitchen-again.jpg");
    copy(&fixture("floorplan.jpg"), &house, "d-plan.jpg");
    std::fs::write(house.join("e-broken.jpg"), b"not a photo").expect("write");

    let output = listing(&["--format", "csv"], &[&house]);
    let mut reader = csv::Reader::from_reader(output.stdout.as_slice());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header,
        [
            "listing",
            "name",
            "position",
            "cover",
            "duplicate_of",
            "flags",
            "leaf",
            "width",
            "height",
            "sharpness",
            "brightness",
            "error",
            "path"
        ]
    );
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.expect("row").iter().map(str::to_owned).collect())
        .collect();
    let column = |i: usize| -> Vec<&str> { rows.iter().map(|r| r[i].as_str()).collect() };
    assert_eq!(column(0), ["house-12"; 5]);
    assert_eq!(
        column(1),
        [
            "b-front.jpg",
            "a-kitchen.jpg",
            "c-kitchen-again.jpg",
            "d-plan.jpg",
            "e-broken.jpg"
        ]
    );
    assert_eq!(column(2), ["1", "2", "3", "4", ""]);
    assert_eq!(column(3), ["true", "false", "false", "false", "false"]);
    assert_eq!(column(4), ["", "", "a-kitchen.jpg", "", ""]);
    assert_eq!(column(5), ["small", "small", "small", "small", ""]);
    assert_eq!(column(6), ["facade", "kitchen", "kitchen", "other", ""]);
    assert_eq!(column(7)[..4], ["576", "576", "576", "497"]);
    assert!(
        rows[4][11].contains("not a JPEG, PNG or WebP"),
        "{:?}",
        rows[4]
    );
    assert!(rows[0][12].ends_with("house-12/b-front.jpg"));
}

#[test]
fn group_by_makes_listings_from_file_names_and_says_what_it_left_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    copy(&fixture("facade.jpg"), dir.path(), "AB12_front.jpg");
    copy(&fixture("bathroom.jpg"), dir.path(), "AB12_bath.jpg");
    copy(&fixture("bedroom.jpg"), dir.path(), "CD34_bed.jpg");
    copy(&fixture("kitchen.jpg"), dir.path(), "unsorted.jpg");
    let output = listing(
        &["--group-by", "^([A-Z]{2}[0-9]{2})_", "--format", "jsonl"],
        &[dir.path()],
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["listing"], "AB12");
    assert_eq!(lines[0]["photos"].as_array().map(Vec::len), Some(2));
    // AB12_bath.jpg sorts first; the facade is the cover and goes first.
    assert_eq!(lines[0]["cover"], 1);
    assert_eq!(lines[0]["order"], serde_json::json!([1, 0]));
    assert_eq!(lines[1]["listing"], "CD34");
    assert_eq!(lines[1]["inventory"], serde_json::json!({"bedroom": 1}));
    let codes: Vec<&str> = lines[1]["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["code"].as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "no_exterior",
            "no_kitchen",
            "no_bathroom",
            "no_floor_plan",
            "few_photos",
            "low_quality"
        ]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1 photo did not match --group-by and was left out"),
        "{stderr}"
    );

    // A pattern that is not a regular expression is refused up front.
    let refused = Command::new(env!("CARGO_BIN_EXE_photolabel"))
        .args(["listing", "--group-by", "(["])
        .arg(dir.path())
        .output()
        .expect("photolabel runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--group-by is not a valid"));
}

/// Every house of the Houses dataset whose photos are all in `val` (never
/// trained on) as a listing of its four photos: the cover must be the
/// frontal photo in at least 97 % of them (issue 12; measured 38 of 38).
#[test]
fn the_cover_of_a_house_is_its_front_photo() {
    let data = root().join("../shared/data");
    let Ok(labels) = std::fs::read_to_string(data.join("labels.csv")) else {
        eprintln!("skipped: the shared data set is not beside this checkout");
        return;
    };
    let mut reader = csv::Reader::from_reader(labels.as_bytes());
    let header = reader.headers().expect("header").clone();
    let at = |name: &str| header.iter().position(|h| h == name).expect(name);
    let (path, source, split, group, label) = (
        at("path"),
        at("source"),
        at("split"),
        at("group"),
        at("source_label"),
    );
    let mut houses: std::collections::BTreeMap<String, Vec<(String, String, String)>> =
        Default::default();
    for row in reader.records() {
        let row = row.expect("row");
        if &row[source] == "houses_dataset" {
            houses.entry(row[group].to_owned()).or_default().push((
                row[path].to_owned(),
                row[split].to_owned(),
                row[label].to_owned(),
            ));
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut listings = Vec::new();
    for (house, photos) in &houses {
        let held_out = photos.iter().all(|(_, split, _)| split == "val");
        if !held_out || !photos.iter().any(|(_, _, label)| label == "frontal") {
            continue;
        }
        let folder = dir.path().join(house);
        std::fs::create_dir(&folder).expect("mkdir");
        for (photo, _, label) in photos {
            let name = format!("{label}.jpg");
            std::fs::copy(data.join(photo), folder.join(name)).expect("copy");
        }
        listings.push(folder);
    }
    assert!(listings.len() >= 30, "only {} val houses", listings.len());
    let paths: Vec<&Path> = listings.iter().map(PathBuf::as_path).collect();
    let output = listing(&["--format", "csv"], &paths);
    let mut reader = csv::Reader::from_reader(output.stdout.as_slice());
    let mut covers = 0;
    let mut frontal_covers = 0;
    for row in reader.records() {
        let row = row.expect("row");
        if &row[3] == "true" {
            covers += 1;
            frontal_covers += usize::from(&row[1] == "frontal.jpg");
        }
    }
    assert_eq!(covers, listings.len(), "one cover per house");
    let share = frontal_covers as f64 / covers as f64;
    eprintln!("cover is the frontal photo in {frontal_covers} of {covers} val houses");
    assert!(share >= 0.97, "{share}");
}
