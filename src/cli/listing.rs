//! `photolabel listing DIR...`: analyse whole listings — labels, duplicates,
//! quality, order, cover and checks — with the same analysis (and the same
//! JSON per listing) as `POST /labelling/listing`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use photolabel_listing::report::EntryResult;
use photolabel_listing::{ListingReport, PhotoFacts, PhotoOutcome};
use photolabel_service::AnalysisArgs;
use photolabel_taxonomy::{decide, DecisionRules, DEFAULT_SECOND_SCENE_THRESHOLD};
use regex::Regex;
use serde::Serialize;

use super::label::{collect_photos, Format};
use super::ModelArgs;
use crate::embedding::embed_files;

/// Analyse listings: every photo labelled and checked for quality, the
/// same shots found, the photos put in order with a cover, and what the
/// listing lacks (exterior, kitchen, bathroom, floor plan…).
///
/// Each folder is one listing (photos found recursively), unless
/// `--group-by` groups the photos by their file names.
#[derive(Debug, Args)]
pub struct ListingArgs {
    /// Listing folders, or with --group-by any photo files and folders.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Group photos into listings by this regular expression over the file
    /// name: the first capture group (or the whole match) names the
    /// listing, e.g. `^([A-Z0-9]+)_` for `AB123_kitchen.jpg`. Photos it does
    /// not match are reported and left out.
    #[arg(long)]
    pub group_by: Option<String>,
    /// `json`: an array of listings; `jsonl`: one listing per line; `csv`:
    /// one row per photo (listing, position, cover, duplicate, flags, leaf).
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// A top scene at or below this confidence (percent) also reports the runner-up.
    #[arg(long, env = "PHOTOLABEL_SECOND_SCENE_THRESHOLD", default_value_t = DEFAULT_SECOND_SCENE_THRESHOLD)]
    pub second_scene_threshold: f64,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// One listing to analyse: its name and its photo files, in name order.
struct Listing {
    name: String,
    files: Vec<PathBuf>,
}

fn base_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// One listing per folder, or the photos of every path grouped by
/// `group_by`; also the files the pattern left out.
fn listings(paths: &[PathBuf], group_by: Option<&Regex>) -> (Vec<Listing>, Vec<PathBuf>) {
    let Some(pattern) = group_by else {
        let listings = paths
            .iter()
            .map(|path| Listing {
                name: base_name(path),
                files: collect_photos(std::slice::from_ref(path)),
            })
            .collect();
        return (listings, Vec::new());
    };
    let mut groups: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for file in collect_photos(paths) {
        let name = base_name(&file);
        let key = pattern
            .captures(&name)
            .and_then(|c| c.get(1).or_else(|| c.get(0)))
            .map(|m| m.as_str().to_owned());
        match key {
            Some(key) => groups.entry(key).or_default().push(file),
            None => unmatched.push(file),
        }
    }
    let listings = groups
        .into_iter()
        .map(|(name, files)| Listing { name, files })
        .collect();
    (listings, unmatched)
}

#[derive(Serialize)]
struct NamedReport<'a> {
    listing: &'a str,
    #[serde(flatten)]
    report: &'a ListingReport,
}

pub fn run(args: ListingArgs) -> anyhow::Result<std::process::ExitCode> {
    let config = args.analysis.config()?;
    let pattern = args
        .group_by
        .as_deref()
        .map(Regex::new)
        .transpose()
        .context("--group-by is not a valid regular expression")?;
    let (listings, unmatched) = listings(&args.paths, pattern.as_ref());
    for file in &unmatched {
        tracing::warn!(path = %file.display(), "file name does not match --group-by; left out");
    }
    if !unmatched.is_empty() {
        eprintln!(
            "{} did not match --group-by and {} left out",
            plural(unmatched.len(), "photo"),
            if unmatched.len() == 1 { "was" } else { "were" }
        );
    }

    let mut labellers = args.model.load_replicas()?;
    let rules = DecisionRules {
        second_scene_threshold: args.second_scene_threshold,
    };
    // Every photo of every listing goes through the model in one pipelined
    // run; only embeddings (5 KB a photo) are kept, never decoded pixels.
    let files: Vec<&PathBuf> = listings.iter().flat_map(|l| &l.files).collect();
    let embeddings = embed_files(&mut labellers, &files, &args.model.limits(), true)?;

    let heads = labellers[0].heads();
    let mut embeddings = embeddings.into_iter();
    let mut reports = Vec::with_capacity(listings.len());
    for listing in &listings {
        let photos = listing
            .files
            .iter()
            .zip(embeddings.by_ref())
            .map(|(file, embedding)| {
                let outcome = match embedding {
                    Ok(embedding) => match embedding.stats {
                        Some(stats) => {
                            let outcome = heads.label_views(embedding.views.view());
                            PhotoOutcome::Labelled(PhotoFacts {
                                label: decide(&outcome.probabilities, &rules),
                                embedding: outcome.pooled(),
                                stats,
                            })
                        }
                        None => failed("internal: no pixel measurements".into()),
                    },
                    Err(reason) => {
                        tracing::warn!(path = %file.display(), %reason, "could not label");
                        failed(reason)
                    }
                };
                (file.display().to_string(), outcome)
            })
            .collect();
        reports.push(ListingReport::build(photos, &config));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_reports(&mut out, args.format, &listings, &reports)?;
    out.flush()?;

    let total: usize = reports.iter().map(|r| r.photos.len()).sum();
    let labelled: usize = reports.iter().map(ListingReport::labelled).sum();
    eprintln!(
        "{}: labelled {labelled} of {}",
        plural(reports.len(), "listing"),
        plural(total, "photo")
    );
    Ok(if labelled == 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// "1 photo", "3 photos".
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A photo the command line could not read or decode: the body the HTTP
/// API gives such a photo, with the reason as its detail.
fn failed(reason: String) -> PhotoOutcome {
    PhotoOutcome::Failed {
        status: 400,
        body: serde_json::json!({ "detail": reason }),
    }
}

fn write_reports(
    out: &mut impl Write,
    format: Format,
    listings: &[Listing],
    reports: &[ListingReport],
) -> anyhow::Result<()> {
    let named = listings.iter().zip(reports).map(|(l, report)| NamedReport {
        listing: &l.name,
        report,
    });
    match format {
        Format::Json => {
            let all: Vec<NamedReport<'_>> = named.collect();
            serde_json::to_writer_pretty(&mut *out, &all)?;
            writeln!(out)?;
        }
        Format::Jsonl => {
            for report in named {
                serde_json::to_writer(&mut *out, &report)?;
                writeln!(out)?;
            }
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(CSV_COLUMNS)?;
            for (listing, report) in listings.iter().zip(reports) {
                for row in csv_rows(&listing.name, report) {
                    writer.write_record(row)?;
                }
            }
            writer.flush().context("writing CSV")?;
        }
    }
    Ok(())
}

const CSV_COLUMNS: [&str; 13] = [
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
    "path",
];

/// One row per photo, in the listing's order (failed photos last):
/// `name` is the file name, `duplicate_of` the file name of the kept photo.
fn csv_rows(listing: &str, report: &ListingReport) -> Vec<Vec<String>> {
    let name = |i: usize| base_name(Path::new(&report.photos[i].name));
    let failed = report
        .photos
        .iter()
        .filter(|p| matches!(p.result, EntryResult::Failed { .. }))
        .map(|p| (None, p.index));
    let ordered = report
        .order
        .iter()
        .enumerate()
        .map(|(p, &i)| (Some(p + 1), i));
    ordered
        .chain(failed)
        .map(|(position, i)| {
            let photo = &report.photos[i];
            let mut row = vec![String::new(); CSV_COLUMNS.len()];
            row[0] = listing.to_owned();
            row[1] = name(i);
            row[3] = (report.cover == Some(i)).to_string();
            row[12] = photo.name.clone();
            match &photo.result {
                EntryResult::Labelled {
                    output,
                    quality,
                    duplicate_of,
                } => {
                    row[2] = position.map(|p| p.to_string()).unwrap_or_default();
                    row[4] = duplicate_of.map(name).unwrap_or_default();
                    row[5] = quality
                        .flags
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(";");
                    row[6] = output.leaf().to_owned();
                    row[7] = quality.width.to_string();
                    row[8] = quality.height.to_string();
                    row[9] = quality.sharpness.to_string();
                    row[10] = quality.brightness.to_string();
                }
                EntryResult::Failed { error } => {
                    row[11] = error["detail"].as_str().unwrap_or("failed").to_owned();
                }
            }
            row
        })
        .collect()
}
