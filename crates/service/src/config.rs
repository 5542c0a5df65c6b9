//! Command-line configuration for `photolabel serve` and `photolabel keys`.
//!
//! Every flag is also an environment variable (`PHOTOLABEL_…`), so the same
//! binary can be configured from a unit file or a container definition.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use photolabel_listing::{
    checks::CheckRules, DuplicateRules, LeafOrder, ListingConfig, QualityThresholds, UnknownLeaf,
};

use crate::fetch::FetchConfig;
use crate::lockout::LockoutConfig;

/// Where the key database lives; shared by `serve` and `keys` so both open
/// the same file.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory for the service's state; the key database is
    /// `<data-dir>/photolabel.db`.
    #[arg(
        long,
        env = "PHOTOLABEL_DATA_DIR",
        default_value = "./photolabel-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Database URL overriding `--data-dir`: `sqlite:///var/lib/photolabel/keys.db`
    /// for one machine, or `postgres://user@host:5432/db` for several
    /// replicas sharing keys, quotas and rate limits (its tables are created
    /// at start-up). Credentials in the URL are never logged.
    #[arg(long, env = "PHOTOLABEL_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Most connections to PostgreSQL per process (one is held per request
    /// only while its statement runs).
    #[arg(
        long,
        env = "PHOTOLABEL_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub database_max_connections: u32,
}

/// The listing analysis' settings, shared by `photolabel listing` and
/// `photolabel serve` (for `POST /labelling/listing`).
#[derive(Debug, Clone, Args)]
pub struct AnalysisArgs {
    /// Order of leaf classes for the suggested photo order, comma-separated;
    /// leaves not named follow in the default order (facade, living_room,
    /// kitchen, bedroom, bathroom, hall_corridor, room, scullery,
    /// balcony-garden, view, building_part, street, no_building, other).
    #[arg(long, env = "PHOTOLABEL_LISTING_ORDER", default_value = "")]
    pub listing_order: String,
    /// A photo whose longer side is under this many pixels is flagged `small`.
    #[arg(long, env = "PHOTOLABEL_SMALL_BELOW", default_value_t = QualityThresholds::default().min_long_side)]
    pub small_below: u32,
    /// A photo whose sharpness (fine-detail ratio, see the contract) is under
    /// this is flagged `blurry`.
    #[arg(long, env = "PHOTOLABEL_BLURRY_BELOW", default_value_t = QualityThresholds::default().blurry_below)]
    pub blurry_below: f32,
    /// A photo whose mean luma (0–1) is under this is flagged `dark`.
    #[arg(long, env = "PHOTOLABEL_DARK_BELOW", default_value_t = QualityThresholds::default().dark_below)]
    pub dark_below: f32,
    /// A photo with more than this share of clipped highlights is flagged
    /// `overexposed`.
    #[arg(long, env = "PHOTOLABEL_OVEREXPOSED_ABOVE", default_value_t = QualityThresholds::default().overexposed_above)]
    pub overexposed_above: f32,
    /// A listing with fewer distinct photos gets the `few_photos` check.
    #[arg(long, env = "PHOTOLABEL_MIN_PHOTOS", default_value_t = CheckRules::default().min_photos)]
    pub min_photos: usize,
}

impl AnalysisArgs {
    pub fn config(&self) -> Result<ListingConfig, UnknownLeaf> {
        Ok(ListingConfig {
            quality: QualityThresholds {
                min_long_side: self.small_below,
                blurry_below: self.blurry_below,
                dark_below: self.dark_below,
                overexposed_above: self.overexposed_above,
            },
            duplicates: DuplicateRules::default(),
            order: LeafOrder::parse(&self.listing_order)?,
            checks: CheckRules {
                min_photos: self.min_photos,
            },
        })
    }
}

/// How images are downloaded for a stranger: by `/labelling/url` and
/// `/labelling/listing` in `serve`, and by `photolabel worker` for queued
/// jobs — one SSRF-safe fetcher with the same flags everywhere.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Let `/labelling/url` fetch from loopback, private, link-local and
    /// other internal addresses. Turns off SSRF protection: only for tests
    /// and trusted intranets.
    #[arg(long, env = "PHOTOLABEL_ALLOW_PRIVATE_URLS", default_value_t = false)]
    pub allow_private_urls: bool,

    /// Largest image `/labelling/url` downloads, in bytes.
    #[arg(long, env = "PHOTOLABEL_URL_MAX_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub url_max_bytes: usize,

    /// Seconds a URL download may take in total, redirects included.
    #[arg(long, env = "PHOTOLABEL_URL_TIMEOUT", default_value_t = 15)]
    pub url_timeout: u64,

    /// Seconds to wait for a TCP connection to the image host.
    #[arg(long, env = "PHOTOLABEL_URL_CONNECT_TIMEOUT", default_value_t = 5)]
    pub url_connect_timeout: u64,

    /// Redirects followed when downloading an image; each hop is checked
    /// like the first URL.
    #[arg(long, env = "PHOTOLABEL_MAX_REDIRECTS", default_value_t = 3)]
    pub max_redirects: usize,
}

impl FetchArgs {
    pub fn config(&self) -> FetchConfig {
        FetchConfig {
            allow_private: self.allow_private_urls,
            max_bytes: self.url_max_bytes,
            total_timeout: Duration::from_secs(self.url_timeout),
            connect_timeout: Duration::from_secs(self.url_connect_timeout),
            max_redirects: self.max_redirects,
            ..FetchConfig::default()
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.url_timeout > 0 && self.url_connect_timeout > 0,
            "--url-timeout and --url-connect-timeout must be at least 1 second"
        );
        Ok(())
    }

    /// The warning an operator must see when SSRF protection is off.
    pub fn warn_if_private_allowed(&self) {
        if self.allow_private_urls {
            tracing::warn!(
                "--allow-private-urls is ON: URLs may point at loopback, private and \
                 link-local addresses (cloud metadata included). Never use this mode \
                 with URLs from untrusted clients."
            );
        }
    }
}

/// `photolabel serve`: the Altum-compatible HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Keep the default loopback address behind a
    /// reverse proxy; use 0.0.0.0:8080 to listen on every interface.
    #[arg(long, env = "PHOTOLABEL_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub store: StoreArgs,

    /// Largest request body in bytes; larger uploads get 413 before they are
    /// read.
    #[arg(long, env = "PHOTOLABEL_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest image in pixels (width × height), checked in the header
    /// before decoding; larger images get 400. Not a flag of its own: the
    /// binary's model flags own `--max-pixels` and [`crate::serve_main`]
    /// copies it here.
    #[arg(skip = photolabel_vision::ImageLimits::default().max_pixels)]
    pub max_pixels: u64,

    /// Most photos in one `POST /labelling/listing` (413 beyond).
    #[arg(long, env = "PHOTOLABEL_LISTING_MAX_PHOTOS", default_value_t = 60)]
    pub listing_max_photos: usize,

    /// Largest `POST /labelling/listing` body in bytes (413 beyond); each
    /// photo in it is still capped by `--max-body-bytes`.
    #[arg(long, env = "PHOTOLABEL_LISTING_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub listing_max_bytes: usize,

    #[command(flatten)]
    pub analysis: AnalysisArgs,

    /// Seconds a client may take to send the request headers.
    #[arg(long, env = "PHOTOLABEL_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout: u64,

    /// Seconds the request body may stay silent before the request is cut
    /// off (408).
    #[arg(long, env = "PHOTOLABEL_BODY_TIMEOUT", default_value_t = 30)]
    pub body_timeout: u64,

    /// Seconds a whole request may take, upload and labelling included
    /// (503 when exceeded).
    #[arg(long, env = "PHOTOLABEL_REQUEST_TIMEOUT", default_value_t = 120)]
    pub request_timeout: u64,

    /// Photos that may wait for the model at once (including those being
    /// decoded); when full, requests get 503 immediately instead of queueing.
    #[arg(long, env = "PHOTOLABEL_QUEUE_CAPACITY", default_value_t = 32)]
    pub queue_capacity: usize,

    /// Copies of the model labelling in parallel, each on its own thread,
    /// all fed from the one queue. 0 = auto: one per core on machines of up
    /// to 4 cores, then 4. With `--threads 0` each replica gets twice its
    /// share of the cores as ONNX Runtime threads (idle ones sleep).
    #[arg(long, env = "PHOTOLABEL_REPLICAS", default_value_t = 0)]
    pub replicas: usize,

    /// Most photos a model replica labels in one batch. 1 disables batching.
    #[arg(long, env = "PHOTOLABEL_MAX_BATCH", default_value_t = 1)]
    pub max_batch: usize,

    /// In percent: when the top scene's confidence is at or below this, the
    /// answer also carries the second scene (the contract's 70 % rule).
    #[arg(long, env = "PHOTOLABEL_SECOND_SCENE_THRESHOLD", default_value_t = photolabel_taxonomy::DEFAULT_SECOND_SCENE_THRESHOLD)]
    pub second_scene_threshold: f64,

    #[command(flatten)]
    pub fetch: FetchArgs,

    /// Invalid API keys one client address may send within
    /// `--bad-key-window` before its requests get 429 for that long (keys
    /// that have authenticated before still pass). 0 turns this off.
    #[arg(long, env = "PHOTOLABEL_BAD_KEY_LIMIT", default_value_t = 20)]
    pub bad_key_limit: u32,

    /// Seconds over which invalid keys are counted per address; also how
    /// long the lockout lasts.
    #[arg(long, env = "PHOTOLABEL_BAD_KEY_WINDOW", default_value_t = 60)]
    pub bad_key_window: u64,

    /// Client addresses tracked for invalid keys at once (IPv6 per /64);
    /// the longest-idle ones are forgotten first, so memory stays bounded.
    #[arg(
        long,
        env = "PHOTOLABEL_BAD_KEY_MAX_ADDRESSES",
        default_value_t = 65_536
    )]
    pub bad_key_max_addresses: usize,

    /// Do not serve the web page at `GET /` (the API is unchanged).
    #[arg(long, env = "PHOTOLABEL_NO_UI", default_value_t = false)]
    pub no_ui: bool,

    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "PHOTOLABEL_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
}

impl ServeArgs {
    /// The defaults, as `--help` documents them (for tests and embedding).
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Wrapper::parse_from(["photolabel"]).serve
    }

    /// `--replicas` with 0 resolved for a machine of `cores` cores.
    pub fn replicas_for(&self, cores: usize) -> usize {
        match self.replicas {
            0 => photolabel_vision::default_replicas(cores),
            n => n,
        }
    }

    pub fn lockout_config(&self) -> LockoutConfig {
        LockoutConfig {
            limit: self.bad_key_limit,
            window: Duration::from_secs(self.bad_key_window),
            max_addresses: self.bad_key_max_addresses,
        }
    }
}

/// `photolabel keys`: manage API keys in the database `serve` uses.
/// `--data-dir`/`--database-url` may come before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once on stdout (it is stored only hashed).
    Create {
        /// A unique name for the customer or integration.
        #[arg(long)]
        name: String,
        /// Requests per minute this key may make, e.g. `60/min` or `60`.
        #[arg(long, value_parser = parse_rate_limit)]
        rate_limit: Option<u32>,
        /// Successful calls this key may make in total.
        #[arg(long)]
        quota: Option<u64>,
    },
    /// List keys: id, name, created, revoked, usage (never the key itself).
    List,
    /// Revoke a key by id or name; it gets 401 from then on.
    Revoke {
        /// The key's id (from `keys list`) or its name.
        id_or_name: String,
    },
}

/// Accepts `N`, `N/min` or `N/m`.
fn parse_rate_limit(s: &str) -> Result<u32, String> {
    let number = s
        .strip_suffix("/min")
        .or_else(|| s.strip_suffix("/m"))
        .unwrap_or(s)
        .trim();
    match number.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "expected a positive number of requests per minute like `60/min`, got `{s}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_forms() {
        assert_eq!(parse_rate_limit("60/min"), Ok(60));
        assert_eq!(parse_rate_limit("5"), Ok(5));
        assert!(parse_rate_limit("0/min").is_err());
        assert!(parse_rate_limit("many").is_err());
    }

    #[test]
    fn store_flags_work_after_the_keys_subcommand() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            keys: KeysArgs,
        }
        let parsed = Wrapper::parse_from(["keys", "create", "--name", "a", "--data-dir", "/x"]);
        assert_eq!(parsed.keys.store.data_dir, std::path::PathBuf::from("/x"));
        let parsed = Wrapper::parse_from(["keys", "--data-dir", "/y", "list"]);
        assert_eq!(parsed.keys.store.data_dir, std::path::PathBuf::from("/y"));
    }

    #[test]
    fn defaults_match_the_contract() {
        let args = ServeArgs::defaults();
        assert_eq!(args.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(args.second_scene_threshold, 70.0);
        assert_eq!(args.fetch.max_redirects, 3);
        assert!(!args.fetch.allow_private_urls);
        assert_eq!(args.bad_key_limit, 20);
        assert_eq!(args.bad_key_window, 60);
    }

    #[test]
    fn automatic_replicas_follow_the_cores_up_to_four() {
        let args = ServeArgs::defaults();
        assert_eq!(
            [1, 2, 4, 16].map(|cores| args.replicas_for(cores)),
            [1, 2, 4, 4]
        );
        let args = ServeArgs {
            replicas: 3,
            ..ServeArgs::defaults()
        };
        assert_eq!(args.replicas_for(16), 3);
    }
}
