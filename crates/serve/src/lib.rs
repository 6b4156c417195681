//! `siamese-serve`: verification, embedding and identification over HTTP, with durable
//! galleries, on top of `siamese-infer`. `siamese serve` starts it; a program may too
//! ([`run`], or [`Service`] for its own runtime and listener).
//!
//! What it owns:
//! - the routes (JSON in and out; images as multipart file parts or base64 in JSON; every
//!   error a JSON body `{"code": STABLE_CODE, "message": ...}`): `POST /v1/verify`,
//!   `POST /v1/embed`, `POST /v1/identify`, galleries as named collections
//!   (`/v1/galleries...`: create, list, delete; enrol images of an identity, remove an
//!   identity, list identities), `GET /healthz`, `/readyz`, `/metrics` (Prometheus text) and
//!   `/openapi.json` (every route);
//! - batching: concurrent requests' images share encoder passes (up to the model's
//!   [`siamese_infer::EMBED_BATCH`] passes, waiting at most a few milliseconds, and only for
//!   requests already decoding), on one encoder thread of its own, never on the async runtime
//!   ([`batch`]);
//! - durability: each collection is a gallery file plus an append-only, checksummed log
//!   ([`wal`]) in a server-named folder under the store ([`store`]); a change is answered only
//!   once its log record is on disk, logs are compacted atomically, and on start every
//!   collection is recovered (a torn last record ignored) and checked against the model's
//!   fingerprint;
//! - the guard: an optional bearer token on every route but the health checks (compared in
//!   constant time), limits on body size, pixels per image (read from the header before
//!   decoding), images per request, requests in flight (then 503 with `Retry-After`) and time
//!   per request; graceful shutdown on SIGTERM or Ctrl-C (stop accepting, finish what is in
//!   flight, compact the galleries).
//!
//! What it promises: the same answers as the command line (`verify` gives `siamese verify
//! --json`'s distance, same and threshold; batching changes no representation); no value of a
//! request ever becomes a file path (names are checked and stored as file contents, never as
//! names: path-like ones are refused with `invalid_name`); nothing from a request is unwrapped
//! or indexed unchecked; every acknowledged gallery change survives `kill -9`. Errors are
//! typed: [`ServeError`] for starting, [`ApiError`] for requests. It prints nothing: what a
//! person should see comes back in [`Started`] and [`Stopped`].
//!
//! What it does not know: training, the command line, how models are made.

pub mod batch;
mod error;
mod input;
pub mod metrics;
mod names;
mod openapi;
pub mod store;
pub mod wal;

mod api;

pub use api::{DEFAULT_GALLERY, MAX_TOP, ROUTES};
pub use error::{ApiError, ServeError};
pub use names::{check_gallery, check_identity};
pub use openapi::ERROR_CODES;

use api::App;
use batch::Batcher;
use input::InputLimits;
use metrics::Metrics;
use sha2::{Digest, Sha256};
use siamese_infer::{check_threshold, Gallery, Model, EMBED_BATCH};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::Store;

/// How the service runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (default `127.0.0.1:8080`: loopback only).
    pub addr: SocketAddr,
    /// The folder galleries are kept in (created when missing); `None` keeps them in memory,
    /// lost when the service stops.
    pub store: Option<PathBuf>,
    /// A gallery file to serve as the collection [`DEFAULT_GALLERY`] (copied into the store
    /// unless the store already has one of that name).
    pub gallery: Option<PathBuf>,
    /// A file holding the bearer token every request but the health checks must carry.
    pub token_file: Option<PathBuf>,
    /// Decide verification (and "unknown") at this threshold instead of the model's.
    pub threshold: Option<f32>,
    /// Encoder passes one batch may gather from concurrent requests (images times the
    /// test-time copies); 1 turns batching off.
    pub max_batch: usize,
    /// The longest the encoder waits for requests still decoding before a pass.
    pub max_wait: Duration,
    /// Bytes in a request body.
    pub max_body_bytes: usize,
    /// Pixels in one image (from its header, before decoding).
    pub max_pixels: u64,
    /// Images in one request.
    pub max_images: usize,
    /// Requests served at once; more get 503 with `Retry-After`.
    pub max_concurrent: usize,
    /// Time per request, body included; longer ones get 503 `timeout`.
    pub timeout: Duration,
    /// Log bytes after which a collection is compacted.
    pub compact_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: None,
            gallery: None,
            token_file: None,
            threshold: None,
            max_batch: EMBED_BATCH,
            max_wait: Duration::from_millis(2),
            max_body_bytes: 16 << 20,
            max_pixels: 16_000_000,
            max_images: 32,
            max_concurrent: 256,
            timeout: Duration::from_secs(30),
            compact_bytes: 8 << 20,
        }
    }
}

/// One collection's size, as reported at start.
#[derive(Clone, Debug)]
pub struct GalleryInfo {
    /// Its name.
    pub name: String,
    /// Enrolled images.
    pub images: usize,
    /// Identities.
    pub identities: usize,
}

/// What the service found and did while starting.
#[derive(Clone, Debug)]
pub struct Started {
    /// The address it listens on (the port chosen when 0 was asked for).
    pub addr: SocketAddr,
    /// Whether galleries are kept on disk.
    pub durable: bool,
    /// The collections.
    pub galleries: Vec<GalleryInfo>,
    /// Log records replayed while recovering.
    pub replayed: usize,
    /// Repairs and notices, one line each (torn log tails ignored, a `--gallery` file not
    /// imported because the store had its collection).
    pub notices: Vec<String>,
}

/// How the service stopped.
#[derive(Clone, Debug, Default)]
pub struct Stopped {
    /// Collections compacted on the way out.
    pub compacted: usize,
    /// Whether requests were still running when the grace period ended.
    pub forced: bool,
    /// What failed while stopping, one line each.
    pub errors: Vec<String>,
}

/// The service, ready to serve: model, encoder thread, recovered galleries.
#[derive(Debug)]
pub struct Service {
    app: Arc<App>,
    notices: Vec<String>,
    replayed: usize,
}

/// Reads the bearer token from `path`: its contents without surrounding white space, which
/// must be non-empty, one line of at most 4096 bytes.
fn read_token(path: &std::path::Path) -> Result<[u8; 32], ServeError> {
    let bad = |message: &str| ServeError::Token {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| ServeError::io(path, e))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("the token file is empty"));
    }
    if token.len() > 4096 || token.contains(['\n', '\r']) {
        return Err(bad("the token must be one line of at most 4096 bytes"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "the token must not contain spaces or control characters",
        ));
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

impl Service {
    /// Loads everything the service needs: the token, the store (recovering every
    /// collection), the `--gallery` file, and the encoder thread. Blocks on file I/O.
    pub fn new(config: &Config, model: Model) -> Result<Self, ServeError> {
        if config.max_batch == 0 || config.max_images == 0 || config.max_concurrent == 0 {
            return Err(ServeError::Config(
                "max batch, images per request and requests in flight must be at least 1".into(),
            ));
        }
        if model.is_face_model() {
            // Its images need detection and alignment before the encoder; serving them through
            // the plain preprocessing would answer wrongly.
            return Err(ServeError::Config(
                "this is a face model (detector, landmarks, encoder): the service does not \
                 detect and align faces yet; serve a model trained on face crops"
                    .into(),
            ));
        }
        let token = config.token_file.as_deref().map(read_token).transpose()?;
        let threshold = config
            .threshold
            .or(model.threshold())
            .map(check_threshold)
            .transpose()?;
        let model = Arc::new(model);
        let (store, recovery) =
            Store::open(config.store.as_deref(), model.clone(), config.compact_bytes)?;
        let mut notices = recovery.warnings;
        if let Some(path) = &config.gallery {
            let gallery = Gallery::open(path, &model)?;
            match store.import(DEFAULT_GALLERY, gallery) {
                Ok(Some(_)) => {}
                Ok(None) => notices.push(format!(
                    "the store already holds the gallery `{DEFAULT_GALLERY}` (with its changes): \
                     {} was not imported again (delete the gallery to re-import it)",
                    path.display()
                )),
                Err(e) => {
                    return Err(ServeError::Store {
                        path: path.clone(),
                        message: format!("importing it as `{DEFAULT_GALLERY}`: {e}"),
                    })
                }
            }
        }
        let metrics = Arc::new(Metrics::default());
        let batcher = Batcher::start(
            model.clone(),
            config.max_batch,
            config.max_wait,
            metrics.clone(),
        )
        .map_err(ServeError::Runtime)?;
        let app = App {
            model,
            threshold,
            batcher,
            store,
            metrics,
            input: InputLimits {
                body_bytes: config.max_body_bytes,
                pixels: config.max_pixels,
                images: config.max_images,
            },
            timeout: config.timeout,
            token,
            ready: AtomicBool::new(true),
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
            max_concurrent: config.max_concurrent,
        };
        Ok(Service {
            app: Arc::new(app),
            notices,
            replayed: recovery.records,
        })
    }

    /// The collections and their sizes.
    pub fn galleries(&self) -> Vec<GalleryInfo> {
        self.app
            .store
            .list()
            .iter()
            .map(|c| {
                let g = c.gallery();
                GalleryInfo {
                    name: c.name().to_string(),
                    images: g.len(),
                    identities: g.identities().len(),
                }
            })
            .collect()
    }

    /// The routes, for a program that runs its own server.
    pub fn router(&self) -> axum::Router {
        api::router(self.app.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then stops accepting, lets the
    /// requests in flight finish (for at most the request time limit and a second), stops
    /// the encoder and compacts every gallery.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Stopped {
        let app = self.app.clone();
        let (stopping, stopped_accepting) = tokio::sync::oneshot::channel::<()>();
        let flag = app.clone();
        let signal = async move {
            shutdown.await;
            flag.ready.store(false, Ordering::SeqCst);
            let _ = stopping.send(());
        };
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(signal);
        let grace = app.timeout + Duration::from_secs(1);
        let mut stopped = Stopped::default();
        tokio::select! {
            r = server => {
                if let Err(e) = r {
                    stopped.errors.push(format!("serving: {e}"));
                }
            }
            _ = async {
                if stopped_accepting.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                stopped.forced = true;
            }
        }
        app.ready.store(false, Ordering::SeqCst);
        let closing = app.clone();
        let closed = tokio::task::spawn_blocking(move || {
            closing.batcher.stop();
            closing.store.compact_all()
        })
        .await;
        match closed {
            Ok((n, errors)) => {
                stopped.compacted = n;
                stopped.errors.extend(errors);
            }
            Err(e) => stopped.errors.push(format!("compacting: {e}")),
        }
        stopped
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the service on a runtime of its own until SIGTERM or Ctrl-C: loads everything
/// ([`Service::new`]), listens on `config.addr`, calls `on_start` once it accepts
/// connections, and returns once it has stopped cleanly.
pub fn run(
    config: &Config,
    model: Model,
    on_start: impl FnOnce(&Started),
) -> Result<Stopped, ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("siamese-serve")
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async {
        let service = Service::new(config, model)?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
        on_start(&Started {
            addr,
            durable: service.app.store.is_durable(),
            galleries: service.galleries(),
            replayed: service.replayed,
            notices: service.notices.clone(),
        });
        Ok(service.serve(listener, shutdown_signal()).await)
    })
}
