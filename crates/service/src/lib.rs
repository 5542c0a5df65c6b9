//! photolabel's HTTP service: the Altum-compatible labelling API, API keys
//! and the usage ledger, safe URL fetching, and the model worker.
//!
//! The binary calls [`serve_main`] for `photolabel serve` and [`keys_main`]
//! for `photolabel keys` (synchronous; they start their own tokio runtime),
//! with the clap argument structs [`ServeArgs`] and [`KeysArgs`]. The async
//! [`run_serve`], [`run_serve_loading`] and [`run_keys`] are there for a
//! caller that already has a runtime.
//!
//! - [`api`]: router and handlers; [`error`]: every client-visible error.
//! - [`auth`]: `x-api-key`, rate limits, quotas; [`lockout`]: addresses
//!   that keep sending invalid keys; [`keys`]: key generation and hashing;
//!   [`store`]: the key database and ledger (SQLite).
//! - [`worker`]: the threads that own the model replicas, behind one bounded
//!   queue.
//! - [`fetch`]: downloading images for `/labelling/url` without SSRF.
//! - [`listing`]: `POST /labelling/listing`, a whole listing at once.
//! - [`limits`]: body size and timeouts; [`server`]: listener and shutdown.
//! - [`ui`]: the web page at `GET /`.
//! - [`queue`]: back-filling through NATS JetStream (`enqueue`, `worker`,
//!   `collect`).

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
mod docs;
pub mod error;
pub mod fetch;
pub mod keys;
pub mod limits;
pub mod listing;
pub mod lockout;
pub mod openapi;
pub mod queue;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod ui;
pub mod worker;

pub use cli::{keys_main, run_keys};
pub use config::{AnalysisArgs, FetchArgs, KeysArgs, KeysCommand, ServeArgs, StoreArgs};
pub use error::ApiError;
pub use server::{run_serve, run_serve_loading, serve_main, Server};
