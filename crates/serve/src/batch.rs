//! The encoder's own thread, and how concurrent requests share its passes.
//!
//! Requests decode their images on tokio's blocking threads, then queue an `EmbedJob`. The
//! encoder thread takes the first job waiting, adds every job queued behind it, and while
//! other requests are still decoding (and the pass is not full) waits up to `max_wait` for
//! them; then it encodes all of their images in one call and hands each request its rows. A
//! pass holds at most `max_passes` encoder passes (images times test-time copies) unless one
//! request alone brings more; `max_passes` 1 turns batching off (each request encoded on its
//! own). The async runtime never runs the encoder. Since the same model and image give the
//! same representation whatever else is in the batch, batching changes no answer.

use crate::error::ApiError;
use crate::metrics::Metrics;
use siamese_infer::{embed_flat, Model, Tta, EMBED_BATCH};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Images waiting for the encoder: `n` preprocessed images, to be encoded under `tta`.
struct EmbedJob {
    pixels: Vec<f32>,
    n: usize,
    tta: Tta,
    reply: oneshot::Sender<Result<Vec<f32>, String>>,
}

/// The encoder thread and its queue.
#[derive(Debug)]
pub struct Batcher {
    tx: Mutex<Option<mpsc::Sender<EmbedJob>>>,
    preparing: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Counts a request as about to queue images (while it decodes them), so the encoder thread
/// waits for it; dropped when the job is queued or the request gives up.
#[derive(Debug)]
pub struct Preparing(Arc<AtomicUsize>);

impl Drop for Preparing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Batcher {
    /// Starts the encoder thread for `model`.
    pub fn start(
        model: Arc<Model>,
        max_passes: usize,
        max_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let preparing = Arc::new(AtomicUsize::new(0));
        let p = preparing.clone();
        let thread = std::thread::Builder::new()
            .name("siamese-encoder".into())
            .spawn(move || run(rx, &model, max_passes.max(1), max_wait, &p, &metrics))?;
        Ok(Batcher {
            tx: Mutex::new(Some(tx)),
            preparing,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Marks a request as preparing images for the encoder (see [`Preparing`]).
    pub fn preparing(&self) -> Preparing {
        self.preparing.fetch_add(1, Ordering::SeqCst);
        Preparing(self.preparing.clone())
    }

    /// Encodes `n` preprocessed images (`pixels`, image after image) under `tta`: their
    /// representations, image after image. `ticket` (from [`Batcher::preparing`]) is released
    /// once the job is queued.
    pub async fn embed(
        &self,
        pixels: Vec<f32>,
        n: usize,
        tta: Tta,
        ticket: Preparing,
    ) -> Result<Vec<f32>, ApiError> {
        let (reply, answer) = oneshot::channel();
        // No longer on its way once queued: released first, so the encoder thread never
        // waits for the very job it has just taken.
        drop(ticket);
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let sent = tx.as_ref().map(|tx| {
                tx.send(EmbedJob {
                    pixels,
                    n,
                    tta,
                    reply,
                })
            });
            if !matches!(sent, Some(Ok(()))) {
                return Err(ApiError::unavailable(
                    "shutting_down",
                    "the service is shutting down",
                    1,
                ));
            }
        }
        match answer.await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(m)) => Err(ApiError::internal(format!("encoding failed: {m}"))),
            Err(_) => Err(ApiError::internal("the encoder stopped")),
        }
    }

    /// Stops taking jobs, lets the encoder finish those queued, and waits for its thread.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The encoder thread: gathers jobs into passes until the queue closes.
fn run(
    rx: mpsc::Receiver<EmbedJob>,
    model: &Model,
    max_passes: usize,
    max_wait: Duration,
    preparing: &AtomicUsize,
    metrics: &Metrics,
) {
    while let Ok(first) = rx.recv() {
        let cap = (max_passes / first.tta.copies()).max(1);
        let mut images = first.n;
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_wait;
        while images < cap {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    // Wait only for requests that are on their way (decoding now).
                    let left = deadline.saturating_duration_since(Instant::now());
                    if preparing.load(Ordering::SeqCst) == 0 || left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(job) => Some(job),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if let Some(job) = next {
                images += job.n;
                jobs.push(job);
            }
        }
        // Jobs under another augmentation (a gallery made with another one) go in passes of
        // their own.
        while !jobs.is_empty() {
            let tta = jobs[0].tta;
            let (same, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.tta == tta);
            jobs = rest;
            encode(model, tta, same, max_passes, metrics);
        }
    }
}

/// Encodes `jobs` (all under `tta`) in one call and answers each.
fn encode(model: &Model, tta: Tta, jobs: Vec<EmbedJob>, max_passes: usize, metrics: &Metrics) {
    let n: usize = jobs.iter().map(|j| j.n).sum();
    let started = Instant::now();
    let result = if jobs.len() == 1 {
        let j = &jobs[0];
        embed(model, &j.pixels, j.n, tta, max_passes)
    } else {
        let mut pixels = Vec::with_capacity(jobs.iter().map(|j| j.pixels.len()).sum());
        for j in &jobs {
            pixels.extend_from_slice(&j.pixels);
        }
        embed(model, &pixels, n, tta, max_passes)
    };
    metrics.batch(n, jobs.len(), started.elapsed());
    let result = result.and_then(|rows| {
        if n > 0 && rows.len().is_multiple_of(n) {
            Ok(rows)
        } else {
            Err(format!("{} values for {n} images", rows.len()))
        }
    });
    match result {
        Ok(rows) => {
            let per = rows.len() / n;
            let mut at = 0;
            for j in jobs {
                let mine = rows[at..at + j.n * per].to_vec();
                at += j.n * per;
                let _ = j.reply.send(Ok(mine));
            }
        }
        Err(m) => {
            for j in jobs {
                let _ = j.reply.send(Err(m.clone()));
            }
        }
    }
}

/// One encoder call, a panic caught as an error (the thread serves on).
fn embed(
    model: &Model,
    pixels: &[f32],
    n: usize,
    tta: Tta,
    max_passes: usize,
) -> Result<Vec<f32>, String> {
    let per_call = max_passes.max(EMBED_BATCH);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        embed_flat(&model.encoder, pixels, n, per_call, tta)
    }))
    .map_err(|_| "the encoder panicked".to_string())?
    .map_err(|e| e.to_string())
}
