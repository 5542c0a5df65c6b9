//! `photolabel serve`: wiring, the HTTP/1.1 listener with its header
//! timeout, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use photolabel_taxonomy::DecisionRules;
use photolabel_vision::{ImageLimits, Labeller, ModelConfig};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::api::{router, AppState};
use crate::config::ServeArgs;
use crate::fetch::Fetcher;
use crate::limits::BodyLimits;
use crate::listing::ListingLimits;
use crate::lockout::BadKeyLockout;
use crate::store::{open_store, Store};
use crate::telemetry;
use crate::worker::{spawn_worker, Model, ModelState, WorkerHandle};

/// `photolabel serve` for a synchronous `main`: starts the tokio runtime,
/// listens at once, loads the model described by `model` on the worker
/// thread (`/health` is 503 until it is loaded) and serves until SIGTERM or
/// Ctrl-C. `limits` (from the model flags' `--max-pixels`) caps uploads.
pub fn serve_main(
    mut args: ServeArgs,
    model: ModelConfig,
    limits: ImageLimits,
) -> anyhow::Result<()> {
    args.max_pixels = limits.max_pixels;
    let cores = photolabel_vision::cores();
    let replicas = args.replicas_for(cores);
    tracing::info!(
        replicas,
        threads_per_replica = model.engine.for_replicas(replicas).threads,
        cores,
        "model layout"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("photolabel-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_serve_loading(args, move || {
        Labeller::load_replicas(&model, replicas).map_err(|e| e.to_string())
    }))
}

/// Runs `photolabel serve` with a model that is already loaded, until
/// SIGTERM or Ctrl-C.
pub async fn run_serve(args: ServeArgs, labeller: Labeller) -> anyhow::Result<()> {
    run_serve_loading(args, move || Ok(vec![labeller])).await
}

/// Runs `photolabel serve`, loading the model's replicas on the worker
/// thread while the server already listens (`/health` answers 503 until
/// they are loaded). Returns an error if the model fails to load.
pub async fn run_serve_loading<M, F>(args: ServeArgs, load: F) -> anyhow::Result<()>
where
    M: Model,
    F: FnOnce() -> Result<Vec<M>, String> + Send + 'static,
{
    let server = Server::start(&args, load).await?;
    let listener = TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let address = listener.local_addr().unwrap_or(args.bind);
    tracing::info!(%address, "listening");
    server.serve(listener, shutdown_signal()).await
}

/// The service, built and ready to listen.
pub struct Server {
    state: Arc<AppState>,
    store: Arc<dyn Store>,
    worker_thread: std::thread::JoinHandle<()>,
    header_timeout: Duration,
    shutdown_grace: Duration,
}

/// Checks the flags that clap cannot.
fn validate(args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=100.0).contains(&args.second_scene_threshold),
        "--second-scene-threshold must be a percentage between 0 and 100"
    );
    anyhow::ensure!(
        args.queue_capacity > 0,
        "--queue-capacity must be at least 1"
    );
    anyhow::ensure!(args.max_batch > 0, "--max-batch must be at least 1");
    // Each replica holds its own copy of the weights and working buffers.
    anyhow::ensure!(args.replicas <= 64, "--replicas must be at most 64");
    anyhow::ensure!(
        args.max_body_bytes > 0,
        "--max-body-bytes must be at least 1"
    );
    anyhow::ensure!(args.max_pixels > 0, "--max-pixels must be at least 1");
    anyhow::ensure!(
        args.listing_max_photos > 0 && args.listing_max_bytes > 0,
        "--listing-max-photos and --listing-max-bytes must be at least 1"
    );
    args.analysis
        .config()
        .map_err(|e| anyhow::anyhow!("--listing-order: {e}"))?;
    anyhow::ensure!(
        args.header_timeout > 0 && args.body_timeout > 0 && args.request_timeout > 0,
        "timeouts must be at least 1 second"
    );
    anyhow::ensure!(
        args.bad_key_limit == 0 || (args.bad_key_window > 0 && args.bad_key_max_addresses > 0),
        "--bad-key-window and --bad-key-max-addresses must be at least 1 (or turn the \
         lockout off with --bad-key-limit 0)"
    );
    args.fetch.validate()
}

impl Server {
    /// Opens the database, starts the model worker (which loads the model)
    /// and builds the router.
    pub async fn start<M, F>(args: &ServeArgs, load: F) -> anyhow::Result<Self>
    where
        M: Model,
        F: FnOnce() -> Result<Vec<M>, String> + Send + 'static,
    {
        validate(args)?;
        args.fetch.warn_if_private_allowed();
        let store = open_store(&args.store)
            .await
            .context("cannot open the key database")?;
        let fetcher = Fetcher::new(args.fetch.config()).context("cannot build the URL fetcher")?;
        let (worker, worker_thread) = spawn_worker(load, args.queue_capacity, args.max_batch)
            .context("cannot start the model worker")?;
        let state = app_state(args, store.clone(), worker, fetcher);
        Ok(Self {
            state,
            store,
            worker_thread,
            header_timeout: Duration::from_secs(args.header_timeout),
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
        })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` resolves (or the model fails to load), then
    /// stops accepting, lets in-flight requests finish (up to the grace
    /// period), stops the model worker and closes the database.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Server {
            state,
            store,
            worker_thread,
            header_timeout,
            shutdown_grace,
        } = self;
        let worker = state.worker.clone();
        let model_failed = async move {
            match worker.wait_loaded().await {
                ModelState::Failed(cause) => cause,
                _ => std::future::pending().await,
            }
        };
        let app = router(state);
        let result = tokio::select! {
            () = accept_loop(listener, app, header_timeout, shutdown_grace, shutdown) => Ok(()),
            cause = model_failed => Err(anyhow::anyhow!("the model failed to load: {cause}")),
        };
        // The router (and with it every worker handle) is gone now, so the
        // worker thread ends after the photo it may be labelling.
        let joined = tokio::task::spawn_blocking(move || worker_thread.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("model worker ended abnormally");
        }
        store.close().await.context("closing the key database")?;
        tracing::info!("stopped");
        result
    }
}

/// The handlers' shared state, from the flags and the parts.
pub fn app_state(
    args: &ServeArgs,
    store: Arc<dyn Store>,
    worker: WorkerHandle,
    fetcher: Fetcher,
) -> Arc<AppState> {
    Arc::new(AppState {
        store,
        worker,
        fetcher,
        image_limits: ImageLimits {
            max_pixels: args.max_pixels,
        },
        rules: DecisionRules {
            second_scene_threshold: args.second_scene_threshold,
        },
        body_limits: BodyLimits {
            max_bytes: args.max_body_bytes,
            listing_max_bytes: args.listing_max_bytes,
            idle_timeout: Duration::from_secs(args.body_timeout),
            request_timeout: Duration::from_secs(args.request_timeout),
        },
        listing: ListingLimits {
            max_photos: args.listing_max_photos,
            // `validate` has already refused a leaf order that does not parse.
            config: args.analysis.config().unwrap_or_default(),
        },
        bad_keys: BadKeyLockout::new(args.lockout_config()),
        metrics: telemetry::prometheus(),
        ui: !args.no_ui,
    })
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    // Owning the connection tasks lets the grace period end them for real.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = app.clone().map_request(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
                let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: no new connections, finishing in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
    connections.shutdown().await;
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Where a peer came from, for handlers that want it.
pub type Peer = ConnectInfo<SocketAddr>;
