//! The model workers: each OS thread owns one replica of the model; handlers
//! reach them through a bounded queue and get their answer on a oneshot
//! channel. Photos of `POST /labelling/listing` have a queue of their own,
//! half the size, which the replicas serve only when no single call waits.
//!
//! One replica with every core as an intra-op thread is the simplest shape,
//! but on a small machine two replicas with one thread each label more
//! photos per second: a single-threaded inference wastes nothing on
//! synchronising threads, and while one replica waits for its next photo the
//! other keeps its core busy (BENCHMARKS.md, issue 4).
//!
//! A request first *reserves* a slot ([`WorkerHandle::reserve`]) and only then
//! decodes its photo (on tokio's blocking pool, so decoding overlaps
//! inference) and hands it over. When every slot is taken the request is
//! refused at once with 503: memory stays bounded by the queue capacity and
//! no CPU is spent decoding photos that could not be labelled anyway.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use photolabel_vision::{Labelled, Labeller, Prepared, Preprocessing};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ApiError;

/// What the worker needs from a model. [`Labeller`] is the real one; tests
/// use stand-ins that answer fixed probabilities or block on purpose.
pub trait Model: Send + 'static {
    fn engine_name(&self) -> String;
    fn preprocessing(&self) -> Preprocessing;
    /// One result per photo, in order.
    fn label(&mut self, batch: &[Prepared]) -> Result<Vec<Labelled>, String>;
}

impl Model for Labeller {
    fn engine_name(&self) -> String {
        Labeller::engine_name(self).to_owned()
    }

    fn preprocessing(&self) -> Preprocessing {
        Labeller::preprocessing(self)
    }

    fn label(&mut self, batch: &[Prepared]) -> Result<Vec<Labelled>, String> {
        Labeller::label(self, batch).map_err(|e| e.to_string())
    }
}

/// What is known about the model once it is loaded.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub engine: String,
    pub preprocessing: Preprocessing,
    /// Replicas labelling in parallel, each on its own thread.
    pub replicas: usize,
}

#[derive(Debug, Clone)]
pub enum ModelState {
    Loading,
    Ready(ModelInfo),
    Failed(String),
}

struct Job {
    prepared: Prepared,
    reply: oneshot::Sender<Result<Labelled, String>>,
}

/// The handlers' side of the worker. Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    sender: mpsc::Sender<Job>,
    state: watch::Receiver<ModelState>,
    capacity: usize,
    /// The listing photos' own queue, half the size, which the replicas
    /// serve only when no single call waits (see
    /// [`WorkerHandle::reserve_for_listing`]).
    listing_sender: mpsc::Sender<Job>,
    listing_capacity: usize,
    /// Photos handed over and not yet taken by a replica.
    waiting: Arc<AtomicUsize>,
}

/// A reserved place in the queue; dropping it gives the place back.
pub struct Slot {
    permit: mpsc::OwnedPermit<Job>,
    preprocessing: Preprocessing,
    handle: WorkerHandle,
}

impl Slot {
    pub fn preprocessing(&self) -> Preprocessing {
        self.preprocessing
    }

    /// Hands the photo to the worker and waits for its probabilities.
    pub async fn label(self, prepared: Prepared) -> Result<Labelled, ApiError> {
        let (reply, answer) = oneshot::channel();
        let Slot { permit, handle, .. } = self;
        handle.waiting.fetch_add(1, Ordering::SeqCst);
        permit.send(Job { prepared, reply });
        handle.report_depth();
        match answer.await {
            Ok(Ok(labelled)) => Ok(labelled),
            Ok(Err(cause)) => Err(ApiError::Internal(format!("inference failed: {cause}"))),
            Err(_) => Err(ApiError::internal("model worker stopped")),
        }
    }
}

impl WorkerHandle {
    pub fn state(&self) -> ModelState {
        self.state.borrow().clone()
    }

    /// Waits until the model is loaded or failed to load.
    pub async fn wait_loaded(&self) -> ModelState {
        let mut state = self.state.clone();
        let result = state
            .wait_for(|s| !matches!(s, ModelState::Loading))
            .await
            .map(|s| s.clone());
        result.unwrap_or_else(|_| ModelState::Failed("model worker stopped".into()))
    }

    /// Photos handed to the model and waiting for a replica to take them
    /// (not counting those still being decoded or fetched).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Photos reserved or waiting for the model right now.
    pub fn depth(&self) -> usize {
        self.capacity.saturating_sub(self.sender.capacity())
            + self
                .listing_capacity
                .saturating_sub(self.listing_sender.capacity())
    }

    fn report_depth(&self) {
        metrics::gauge!("photolabel_queue_depth").set(self.depth() as f64);
    }

    fn ready(&self) -> Result<ModelInfo, ApiError> {
        match &*self.state.borrow() {
            ModelState::Ready(info) => Ok(info.clone()),
            ModelState::Loading => Err(ApiError::NotReady),
            ModelState::Failed(cause) => {
                Err(ApiError::Internal(format!("model failed to load: {cause}")))
            }
        }
    }

    /// Takes a place in the queue, or refuses at once: 503 while the model
    /// loads or when every place is taken.
    pub fn reserve(&self) -> Result<Slot, ApiError> {
        let preprocessing = self.ready()?.preprocessing;
        let permit = match self.sender.clone().try_reserve_owned() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("photolabel_queue_rejections_total").increment(1);
                return Err(ApiError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(ApiError::internal("model worker stopped"))
            }
        };
        self.report_depth();
        Ok(Slot {
            permit,
            preprocessing,
            handle: self.clone(),
        })
    }

    /// Takes a place in the listing photos' queue, *waiting* for one rather
    /// than refusing: a listing is one request, and a 503 for its 31st photo
    /// would waste the 30 before it. That queue is apart from the single
    /// calls' and the replicas take from it only when no single call waits,
    /// so a single call waits at most for the photos being labelled, never
    /// behind a listing (measured in BENCHMARKS.md, issue 12). 503 only
    /// while the model loads.
    pub async fn reserve_for_listing(&self) -> Result<Slot, ApiError> {
        let preprocessing = self.ready()?.preprocessing;
        let permit = self
            .listing_sender
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| ApiError::internal("model worker stopped"))?;
        self.report_depth();
        Ok(Slot {
            permit,
            preprocessing,
            handle: self.clone(),
        })
    }

    /// Model replicas labelling in parallel (1 until the model is loaded).
    pub fn replicas(&self) -> usize {
        self.ready().map_or(1, |info| info.replicas)
    }
}

/// Starts the worker threads. `load` runs on the first of them and returns
/// the replicas (at least one), so the server can listen (and say "not
/// ready" on `/health`) while the model loads; every replica then gets its
/// own thread, all pulling from the one queue. The returned thread ends when
/// every [`WorkerHandle`] is dropped and the other replicas' threads have
/// ended.
pub fn spawn_worker<M, F>(
    load: F,
    capacity: usize,
    max_batch: usize,
) -> std::io::Result<(WorkerHandle, std::thread::JoinHandle<()>)>
where
    M: Model,
    F: FnOnce() -> Result<Vec<M>, String> + Send + 'static,
{
    let capacity = capacity.max(1);
    let max_batch = max_batch.max(1);
    let (sender, receiver) = mpsc::channel(capacity);
    let listing_capacity = (capacity / 2).max(1);
    let (listing_sender, listing_receiver) = mpsc::channel(listing_capacity);
    let (state_tx, state_rx) = watch::channel(ModelState::Loading);
    let handle = WorkerHandle {
        sender,
        state: state_rx,
        capacity,
        listing_sender,
        listing_capacity,
        waiting: Arc::new(AtomicUsize::new(0)),
    };
    let depth_handle = handle.clone();
    let thread = std::thread::Builder::new()
        .name("photolabel-model".into())
        .spawn(move || {
            let started = Instant::now();
            let failed = |cause: String| {
                tracing::error!(%cause, "model failed to load");
                state_tx.send_replace(ModelState::Failed(cause));
            };
            let mut models = match catch_unwind(AssertUnwindSafe(load)) {
                Ok(Ok(models)) if !models.is_empty() => models,
                Ok(Ok(_)) => return failed("no model replica was loaded".into()),
                Ok(Err(cause)) => return failed(cause),
                Err(_) => return failed("model loading panicked".into()),
            };
            let first = models.remove(0);
            let info = ModelInfo {
                engine: first.engine_name(),
                preprocessing: first.preprocessing(),
                replicas: models.len() + 1,
            };
            tracing::info!(
                engine = %info.engine,
                replicas = info.replicas,
                seconds = started.elapsed().as_secs_f64(),
                "model loaded"
            );
            // Only the depth reporting needs a handle; it must not keep the
            // channels open, so keep weak senders.
            let depth = Depth {
                singles: (depth_handle.sender.downgrade(), capacity),
                listings: (depth_handle.listing_sender.downgrade(), listing_capacity),
                waiting: depth_handle.waiting.clone(),
            };
            drop(depth_handle);
            // The replicas take turns waiting on the queue: whoever holds the
            // lock takes the next photo(s), then releases it to infer.
            let receiver = Arc::new(Mutex::new(Queues {
                singles: receiver,
                listings: listing_receiver,
            }));
            let mut others = Vec::with_capacity(models.len());
            for (index, model) in models.into_iter().enumerate() {
                let (receiver, depth) = (receiver.clone(), depth.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("photolabel-model-{}", index + 1))
                    .spawn(move || run(model, &receiver, max_batch, &depth));
                match spawned {
                    Ok(thread) => others.push(thread),
                    Err(e) => tracing::error!(error = %e, "cannot start a model replica's thread"),
                }
            }
            state_tx.send_replace(ModelState::Ready(ModelInfo {
                replicas: others.len() + 1,
                ..info
            }));
            run(first, &receiver, max_batch, &depth);
            for thread in others {
                if thread.join().is_err() {
                    tracing::error!("a model replica's thread ended abnormally");
                }
            }
            tracing::info!("model worker stopped");
        })?;
    Ok((handle, thread))
}

/// The two queues the replicas take photos from.
struct Queues {
    singles: mpsc::Receiver<Job>,
    listings: mpsc::Receiver<Job>,
}

/// Reports the queues' depth without keeping them open.
#[derive(Clone)]
struct Depth {
    singles: (mpsc::WeakSender<Job>, usize),
    listings: (mpsc::WeakSender<Job>, usize),
    waiting: Arc<AtomicUsize>,
}

impl Depth {
    fn report(&self) {
        let waiting = |(weak, capacity): &(mpsc::WeakSender<Job>, usize)| {
            weak.upgrade()
                .map_or(0, |sender| capacity.saturating_sub(sender.capacity()))
        };
        let depth = waiting(&self.singles) + waiting(&self.listings);
        metrics::gauge!("photolabel_queue_depth").set(depth as f64);
    }
}

/// Takes the next photo — a single call's before any listing photo — and,
/// up to `max_batch`, those already waiting behind it. `None` once both
/// queues are closed and empty.
fn next_batch(
    queues: &Mutex<Queues>,
    runtime: &tokio::runtime::Runtime,
    max_batch: usize,
) -> Option<Vec<Job>> {
    // No code panics while holding the lock, so a poisoned lock is still
    // consistent.
    let mut queues = queues.lock().unwrap_or_else(|e| e.into_inner());
    let Queues { singles, listings } = &mut *queues;
    let first = runtime.block_on(async {
        tokio::select! {
            biased;
            Some(job) = singles.recv() => Some(job),
            Some(job) = listings.recv() => Some(job),
            else => None,
        }
    })?;
    let mut jobs = vec![first];
    while jobs.len() < max_batch {
        match singles.try_recv().or_else(|_| listings.try_recv()) {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

fn run<M: Model>(mut model: M, queues: &Mutex<Queues>, max_batch: usize, depth: &Depth) {
    // Waiting on two queues at once takes an async `select`; each replica
    // thread drives it on a runtime of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a model replica's queue runtime");
            return;
        }
    };
    while let Some(mut jobs) = next_batch(queues, &runtime, max_batch) {
        depth.waiting.fetch_sub(jobs.len(), Ordering::SeqCst);
        depth.report();
        // A client that went away needs no answer.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (batch, replies): (Vec<Prepared>, Vec<_>) = jobs
            .into_iter()
            .map(|job| (job.prepared, job.reply))
            .unzip();
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| model.label(&batch)));
        metrics::histogram!("photolabel_inference_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("photolabel_batch_size").record(batch.len() as f64);
        match result {
            Ok(Ok(results)) if results.len() == replies.len() => {
                // Backbone passes: the mirrored view runs only on unsure
                // photos, so passes / photos is what a photo costs.
                let passes: usize = results.iter().map(|l| l.views).sum();
                metrics::counter!("photolabel_backbone_passes_total").increment(passes as u64);
                for (reply, labelled) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(labelled));
                }
            }
            Ok(Ok(results)) => {
                let cause = format!(
                    "model returned {} results for {} photos",
                    results.len(),
                    replies.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(cause.clone()));
                }
            }
            Ok(Err(cause)) => {
                for reply in replies {
                    let _ = reply.send(Err(cause.clone()));
                }
            }
            Err(_) => {
                tracing::error!("model panicked during inference");
                for reply in replies {
                    let _ = reply.send(Err("model panicked".into()));
                }
            }
        }
    }
}
