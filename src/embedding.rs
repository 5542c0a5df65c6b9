//! Embedding many photos from disk: decoding on worker threads overlaps the
//! backbone (one thread per model replica), and an optional cache keeps
//! `train` and `eval` from recomputing the same embeddings.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array1, Array2, Axis};
use photolabel_vision::augment::augment;
use photolabel_vision::{
    prepare, prepare_measured, Embedder, ImageLimits, Labeller, LabellerError, PhotoStats,
    Prepared, Preprocessing, EMBEDDING_DIM,
};

/// Photos decoded ahead of the backbone, per model replica. Photos go
/// through the backbone one at a time: on the 2-core machine ONNX Runtime
/// took 20 ms per photo at batch 1 and 27 ms per photo at batch 4
/// (`photolabel bench --batch-sizes 1,2,4`), and labelling 200 photos took
/// 5.3 s at batch 1 against 9.2 s at batch 16 — bigger batches only lose
/// cache. One at a time also makes a photo's embedding independent of
/// which photos share its run, whichever replica computes it.
const AHEAD: usize = 2;

/// Largest file the command line reads; bigger files get a per-file error.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A photo to embed: where it is, and its cache key.
pub struct PhotoRef<'a> {
    pub path: &'a Path,
    pub key: &'a str,
    pub variant: Variant,
}

/// What to embed of a photo file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The photo itself, with the preprocessing's views.
    Photo,
    /// An augmented copy made with this seed (`photolabel_vision::augment`):
    /// one view, never mirrored again (the augmentation mirrors at random).
    Augmented(u64),
}

/// A photo's embeddings, one row per view (the photo, its mirror image…).
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoEmbedding {
    pub views: Array2<f32>,
    /// What the decoded pixels measured; `None` when the embedding came
    /// from the cache, which keeps embeddings only.
    pub stats: Option<PhotoStats>,
}

impl PhotoEmbedding {
    /// What the heads see when labelling: the views averaged.
    pub fn mean(&self) -> Array1<f32> {
        self.views
            .mean_axis(Axis(0))
            .expect("a photo has at least one view")
    }
}

/// A model replica for [`embed_photos`], and which views it runs.
pub enum Replica<'a> {
    /// Every view of the embedder's preprocessing (`train` and `eval`: the
    /// cache keeps both views, and each command decides what to use).
    AllViews(&'a mut Embedder),
    /// Only the views the labeller's heads need for each photo (`label`,
    /// `listing`): the mirrored one only where the first is unsure.
    NeededViews(&'a mut Labeller),
}

impl Replica<'_> {
    fn preprocessing(&self) -> Preprocessing {
        match self {
            Self::AllViews(embedder) => embedder.preprocessing(),
            Self::NeededViews(labeller) => labeller.preprocessing(),
        }
    }

    fn views(&mut self, prepared: &Prepared) -> Result<Array2<f32>, LabellerError> {
        let one = std::slice::from_ref(prepared);
        match self {
            Self::AllViews(embedder) => Ok(embedder.embed_views(one)?.index_axis_move(Axis(0), 0)),
            Self::NeededViews(labeller) => Ok(labeller
                .embed_needed_views(one)?
                .pop()
                .expect("one photo in, one out")),
        }
    }
}

/// An embedding per photo, or why the photo could not be embedded.
pub type EmbeddingResult = Result<PhotoEmbedding, String>;

/// Embeddings keyed by (photo key, file size), in a file named after the
/// backbone and preprocessing that produced them, so a changed model never
/// reads stale vectors. Every view is kept, so training can use them apart.
pub struct EmbeddingCache {
    entries: HashMap<String, PhotoEmbedding>,
    writer: Option<BufWriter<File>>,
}

impl EmbeddingCache {
    pub fn disabled() -> Self {
        Self {
            entries: HashMap::new(),
            writer: None,
        }
    }

    pub fn open(dir: &Path, labeller: &Embedder) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let p = labeller.preprocessing();
        let name = format!(
            "{}-{}-{}-views.emb",
            &labeller.backbone_sha256()[..16],
            serde_json::to_value(p.view)?.as_str().unwrap_or("view"),
            if p.flip { "flip" } else { "noflip" }
        );
        let path = dir.join(name);
        let mut entries = HashMap::new();
        if let Ok(file) = File::open(&path) {
            read_entries(BufReader::new(file), &mut entries);
        }
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(cache = %path.display(), cached = entries.len(), "embedding cache");
        Ok(Self {
            entries,
            writer: Some(BufWriter::new(writer)),
        })
    }

    fn cache_key(photo: &PhotoRef<'_>) -> Option<String> {
        let len = std::fs::metadata(photo.path).ok()?.len();
        Some(match photo.variant {
            Variant::Photo => format!("{}\u{0}{len}", photo.key),
            Variant::Augmented(seed) => format!("{}\u{0}{len}\u{0}augment {seed}", photo.key),
        })
    }

    fn get(&self, key: &str) -> Option<PhotoEmbedding> {
        self.entries.get(key).cloned()
    }

    /// Appends a record: key length, key, view count, then the views' floats.
    fn put(&mut self, key: String, embedding: &PhotoEmbedding) -> std::io::Result<()> {
        if let Some(writer) = &mut self.writer {
            let bytes = key.as_bytes();
            writer.write_all(&(bytes.len() as u32).to_le_bytes())?;
            writer.write_all(bytes)?;
            writer.write_all(&(embedding.views.nrows() as u32).to_le_bytes())?;
            for v in &embedding.views {
                writer.write_all(&v.to_le_bytes())?;
            }
            // As a record read back from the file would be: no stats.
            let stored = PhotoEmbedding {
                views: embedding.views.clone(),
                stats: None,
            };
            self.entries.insert(key, stored);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().map_or(Ok(()), |w| w.flush())
    }
}

/// Reads records until the first incomplete one (a run cut short leaves a
/// partial record at the end; everything before it is still good).
fn read_entries(mut reader: impl Read, entries: &mut HashMap<String, PhotoEmbedding>) {
    fn read_u32(reader: &mut impl Read) -> Option<usize> {
        let mut bytes = [0u8; 4];
        reader
            .read_exact(&mut bytes)
            .ok()
            .map(|()| u32::from_le_bytes(bytes) as usize)
    }
    loop {
        // Lengths are bounded so a damaged file cannot ask for gigabytes.
        let Some(len) = read_u32(&mut reader).filter(|&n| n <= 4096) else {
            return;
        };
        let mut key = vec![0u8; len];
        if reader.read_exact(&mut key).is_err() {
            return;
        }
        let Some(views) = read_u32(&mut reader).filter(|v| (1..=16).contains(v)) else {
            return;
        };
        let mut floats = vec![0u8; views * EMBEDDING_DIM * 4];
        if reader.read_exact(&mut floats).is_err() {
            return;
        }
        let Ok(key) = String::from_utf8(key) else {
            return;
        };
        let values = floats
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let Ok(views) = Array2::from_shape_vec((views, EMBEDDING_DIM), values) else {
            return;
        };
        entries.insert(key, PhotoEmbedding { views, stats: None });
    }
}

/// Reads and prepares one photo file (or its augmented copy), with the
/// command line's size cap; with `measure`, also its [`PhotoStats`].
pub fn prepare_file(
    path: &Path,
    limits: &ImageLimits,
    preprocessing: &Preprocessing,
    variant: Variant,
    measure: bool,
) -> Result<Prepared, String> {
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!("file is larger than {MAX_FILE_BYTES} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match variant {
        Variant::Photo if measure => prepare_measured(&bytes, limits, preprocessing),
        Variant::Photo => prepare(&bytes, limits, preprocessing),
        Variant::Augmented(seed) => augment(&bytes, seed, limits).and_then(|copy| {
            let one_view = Preprocessing {
                flip: false,
                ..*preprocessing
            };
            prepare(&copy, limits, &one_view)
        }),
    }
    .map_err(|e| e.to_string())
}

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal.
pub fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Embeds every photo, in order. Decoding runs on one thread per core while
/// each embedder (model replica) runs on a thread of its own; cached photos
/// are not decoded at all. With `measure`, decoded photos also get their
/// [`PhotoStats`] (1.4 ms a photo, which only `listing` needs).
pub fn embed_photos(
    embedders: Vec<Replica<'_>>,
    photos: &[PhotoRef<'_>],
    limits: &ImageLimits,
    cache: &mut EmbeddingCache,
    progress: &ProgressBar,
    measure: bool,
) -> anyhow::Result<Vec<EmbeddingResult>> {
    let Some(preprocessing) = embedders.first().map(|e| e.preprocessing()) else {
        anyhow::bail!("no model to embed the photos with");
    };
    let mut results: Vec<Option<EmbeddingResult>> = vec![None; photos.len()];
    let mut todo: Vec<(usize, PathBuf, Variant, Option<String>)> = Vec::new();
    for (i, photo) in photos.iter().enumerate() {
        let key = EmbeddingCache::cache_key(photo);
        match key.as_deref().and_then(|k| cache.get(k)) {
            Some(embedding) => {
                results[i] = Some(Ok(embedding));
                progress.inc(1);
            }
            None => todo.push((i, photo.path.to_path_buf(), photo.variant, key)),
        }
    }
    let decoders = photolabel_vision::cores();
    let ahead = AHEAD * embedders.len();
    let (job_tx, job_rx) = crossbeam_channel::bounded::<(usize, PathBuf, Variant)>(ahead);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<(usize, Result<Prepared, String>)>(ahead);
    let (embedded_tx, embedded_rx) = crossbeam_channel::bounded::<(usize, EmbeddingResult)>(ahead);
    let keys: HashMap<usize, Option<String>> =
        todo.iter().map(|(i, _, _, k)| (*i, k.clone())).collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..decoders {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                for (i, path, variant) in job_rx {
                    if done_tx
                        .send((
                            i,
                            prepare_file(&path, limits, &preprocessing, variant, measure),
                        ))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let feeder = scope.spawn(move || {
            for (i, path, variant, _) in todo {
                if job_tx.send((i, path, variant)).is_err() {
                    return;
                }
            }
        });
        let replicas: Vec<_> = embedders
            .into_iter()
            .map(|mut replica| {
                let (done_rx, embedded_tx) = (done_rx.clone(), embedded_tx.clone());
                scope.spawn(move || -> anyhow::Result<()> {
                    for (i, outcome) in done_rx {
                        let embedding = match outcome {
                            Ok(prepared) => Ok(PhotoEmbedding {
                                views: replica.views(&prepared)?,
                                stats: prepared.stats,
                            }),
                            Err(reason) => Err(reason),
                        };
                        if embedded_tx.send((i, embedding)).is_err() {
                            break;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        // Only the replicas may hold these now, so the loop below ends
        // when they have all finished.
        drop((done_rx, embedded_tx));
        for (i, embedding) in embedded_rx {
            if let (Ok(embedding), Some(Some(key))) = (&embedding, keys.get(&i)) {
                cache.put(key.clone(), embedding)?;
            }
            results[i] = Some(embedding);
            progress.inc(1);
        }
        for replica in replicas {
            replica
                .join()
                .map_err(|_| anyhow::anyhow!("a model replica's thread panicked"))??;
        }
        feeder.join().expect("feeder thread does not panic");
        Ok(())
    })?;
    cache.flush()?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not processed".into())))
        .collect())
}

/// Embeds photo files for `label` and `listing` (which `measure`s them):
/// no cache (a user's photos are labelled once), a progress bar on stderr.
/// One result per file.
pub fn embed_files<P: AsRef<Path>>(
    labellers: &mut [Labeller],
    files: &[P],
    limits: &ImageLimits,
    measure: bool,
) -> anyhow::Result<Vec<EmbeddingResult>> {
    let keys: Vec<String> = files
        .iter()
        .map(|p| p.as_ref().display().to_string())
        .collect();
    let refs: Vec<PhotoRef<'_>> = files
        .iter()
        .zip(&keys)
        .map(|(path, key)| PhotoRef {
            path: path.as_ref(),
            key,
            variant: Variant::Photo,
        })
        .collect();
    let progress = progress_bar(refs.len(), "labelling");
    let embeddings = embed_photos(
        labellers.iter_mut().map(Replica::NeededViews).collect(),
        &refs,
        limits,
        &mut EmbeddingCache::disabled(),
        &progress,
        measure,
    )?;
    progress.finish_and_clear();
    Ok(embeddings)
}

/// Embeds labelled photos (`train`, `eval`), through the cache in
/// `cache_dir` when one is given, with a progress bar named `what`.
///
/// Each entry says what to embed of which photo; a photo may be listed
/// several times with different variants (`train`'s augmented copies).
/// One result per entry, in order.
pub fn embed_labelled(
    embedder: &mut Embedder,
    photos: &[(&crate::dataset::LabelledPhoto, Variant)],
    limits: &ImageLimits,
    cache_dir: Option<&Path>,
    what: &str,
) -> anyhow::Result<Vec<EmbeddingResult>> {
    let mut cache = match cache_dir {
        Some(dir) => EmbeddingCache::open(dir, embedder)?,
        None => EmbeddingCache::disabled(),
    };
    let refs: Vec<PhotoRef<'_>> = photos
        .iter()
        .map(|(p, variant)| PhotoRef {
            path: &p.path,
            key: &p.key,
            variant: *variant,
        })
        .collect();
    let progress = progress_bar(refs.len(), what);
    let results = embed_photos(
        vec![Replica::AllViews(embedder)],
        &refs,
        limits,
        &mut cache,
        &progress,
        false,
    )?;
    progress.finish_and_clear();
    Ok(results)
}

/// The seed of augmented copy `copy` of the photo with this key, so that a
/// copy is the same in every run.
pub fn augment_seed(key: &str, copy: usize) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{key}\u{0}{copy}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("a sha256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedding(views: usize, seed: f32) -> PhotoEmbedding {
        PhotoEmbedding {
            views: Array2::from_shape_fn((views, EMBEDDING_DIM), |(v, j)| {
                seed + v as f32 + j as f32 / 1000.0
            }),
            stats: None,
        }
    }

    #[test]
    fn cache_records_read_back_with_their_views_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.emb");
        let mut cache = EmbeddingCache {
            entries: HashMap::new(),
            writer: Some(BufWriter::new(File::create(&path).unwrap())),
        };
        cache.put("a\u{0}10".into(), &embedding(2, 0.0)).unwrap();
        cache.put("b\u{0}20".into(), &embedding(1, 5.0)).unwrap();
        cache.flush().unwrap();
        drop(cache);
        // A run killed mid-write leaves half a record at the end.
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(b"c\x0030");
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        assert!(bytes.len() > whole);

        let mut entries = HashMap::new();
        read_entries(BufReader::new(File::open(&path).unwrap()), &mut entries);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries["a\u{0}10"], embedding(2, 0.0));
        assert_eq!(entries["b\u{0}20"], embedding(1, 5.0));
        let mean = entries["a\u{0}10"].mean();
        assert!((mean[0] - 0.5).abs() < 1e-6);
    }
}
