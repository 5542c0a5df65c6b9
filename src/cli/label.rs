//! `photolabel label PATH...`: label photo files and folders.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use photolabel_taxonomy::{decide, DecisionRules, Label, Output, DEFAULT_SECOND_SCENE_THRESHOLD};
use serde::Serialize;

use super::ModelArgs;
use crate::embedding::embed_files;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON array of results.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A CSV table, one row per photo.
    Csv,
}

/// Label photos: one result per photo, as the API's `Output` object.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Photo files or folders (searched recursively for .jpg, .jpeg, .png, .webp).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// A top scene at or below this confidence (percent) also reports the runner-up.
    #[arg(long, env = "PHOTOLABEL_SECOND_SCENE_THRESHOLD", default_value_t = DEFAULT_SECOND_SCENE_THRESHOLD)]
    pub second_scene_threshold: f64,
    #[command(flatten)]
    pub model: ModelArgs,
}

const PHOTO_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

fn is_photo(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PHOTO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Files named on the command line are always tried (a bad one gets its own
/// error); inside folders only photo extensions are picked up.
pub fn collect_photos(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut photos = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(path)
                .follow_links(false)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .filter(|p| is_photo(p))
                .collect();
            found.sort();
            photos.extend(found);
        } else {
            photos.push(path.clone());
        }
    }
    photos
}

#[derive(Serialize)]
struct Record<'a> {
    path: String,
    #[serde(rename = "Output", skip_serializing_if = "Option::is_none")]
    output: Option<&'a Label>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

pub fn run(args: LabelArgs) -> anyhow::Result<std::process::ExitCode> {
    let labellers = &mut args.model.load_replicas()?;
    let rules = DecisionRules {
        second_scene_threshold: args.second_scene_threshold,
    };
    let files = collect_photos(&args.paths);
    let keys: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let embeddings = embed_files(labellers, &files, &args.model.limits(), false)?;

    let results: Vec<Result<Label, String>> = embeddings
        .into_iter()
        .map(|e| {
            e.map(|embedding| {
                decide(
                    &labellers[0]
                        .heads()
                        .label_views(embedding.views.view())
                        .probabilities,
                    &rules,
                )
            })
        })
        .collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_results(&mut out, args.format, &keys, &results)?;
    out.flush()?;

    let labelled = results.iter().filter(|r| r.is_ok()).count();
    let failed = results.len() - labelled;
    for (key, result) in keys.iter().zip(&results) {
        if let Err(reason) = result {
            tracing::warn!(path = %key, %reason, "could not label");
        }
    }
    if failed > 0 {
        eprintln!(
            "labelled {labelled} of {} photos; {failed} failed",
            results.len()
        );
    }
    Ok(if labelled == 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

fn write_results(
    out: &mut impl Write,
    format: Format,
    keys: &[String],
    results: &[Result<Label, String>],
) -> anyhow::Result<()> {
    let records = keys.iter().zip(results).map(|(key, result)| Record {
        path: key.clone(),
        output: result.as_ref().ok(),
        error: result.as_ref().err().map(String::as_str),
    });
    match format {
        Format::Json => {
            let all: Vec<Record<'_>> = records.collect();
            serde_json::to_writer_pretty(&mut *out, &all)?;
            writeln!(out)?;
        }
        Format::Jsonl => {
            for record in records {
                serde_json::to_writer(&mut *out, &record)?;
                writeln!(out)?;
            }
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(CSV_COLUMNS)?;
            for (key, result) in keys.iter().zip(results) {
                writer.write_record(csv_row(key, result))?;
            }
            writer.flush().context("writing CSV")?;
        }
    }
    Ok(())
}

const CSV_COLUMNS: [&str; 12] = [
    "path",
    "Image_Class",
    "ConfidencePercent_Image_Class",
    "Room_Class",
    "ConfidencePercent_Room_Class",
    "Room_Subclass",
    "ConfidencePercent_Room_Subclass",
    "Scene_Class1",
    "ConfidencePercent_Scene_Class1",
    "Scene_Class2",
    "ConfidencePercent_Scene_Class2",
    "error",
];

/// A CSV row with the same names and confidence strings as the JSON output
/// (taken from it, so the two can never disagree).
fn csv_row(key: &str, result: &Result<Label, String>) -> Vec<String> {
    let mut row = vec![String::new(); CSV_COLUMNS.len()];
    row[0] = key.to_owned();
    match result {
        Ok(label) => {
            let value = serde_json::to_value(Output {
                output: label.clone(),
            })
            .unwrap_or_default();
            for (i, column) in CSV_COLUMNS.iter().enumerate().skip(1).take(10) {
                if let Some(text) = value["Output"][column].as_str() {
                    row[i] = text.to_owned();
                }
            }
        }
        Err(reason) => row[11] = reason.clone(),
    }
    row
}
