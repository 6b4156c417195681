//! The routes, their handlers, and the guard every request passes: authentication, the limit
//! on requests in flight, the time limit, and the metrics.

use crate::batch::Batcher;
use crate::error::ApiError;
use crate::input::{decode_all, drain, read_json, Form, InputLimits, Upload};
use crate::metrics::{GalleryGauge, Metrics};
use crate::names;
use crate::store::{Collection, Store, StoreError};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use siamese_infer::{check_threshold, Gallery, Identification, Model, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Every route: method and path pattern (axum's and OpenAPI's `{name}` syntax).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/verify"),
    ("POST", "/v1/embed"),
    ("POST", "/v1/identify"),
    ("GET", "/v1/galleries"),
    ("POST", "/v1/galleries"),
    ("GET", "/v1/galleries/{name}"),
    ("DELETE", "/v1/galleries/{name}"),
    ("GET", "/v1/galleries/{name}/identities"),
    ("POST", "/v1/galleries/{name}/identities/{identity}/images"),
    ("DELETE", "/v1/galleries/{name}/identities/{identity}"),
];

/// The collection `identify` searches when the request names none (and the one
/// `--gallery FILE` is loaded as).
pub const DEFAULT_GALLERY: &str = "default";

/// The most candidates `identify` lists.
pub const MAX_TOP: usize = 1000;

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    pub(crate) model: Arc<Model>,
    /// Verification's threshold, and identification's "unknown" one.
    pub(crate) threshold: Option<f32>,
    pub(crate) batcher: Batcher,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) input: InputLimits,
    pub(crate) timeout: Duration,
    /// SHA-256 of the bearer token, when one is required.
    pub(crate) token: Option<[u8; 32]>,
    pub(crate) ready: AtomicBool,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max_concurrent: usize,
}

type Shared = State<Arc<App>>;

/// The router: every route of [`ROUTES`], behind the guard.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/verify", post(verify))
        .route("/v1/embed", post(embed))
        .route("/v1/identify", post(identify))
        .route("/v1/galleries", get(list_galleries).post(create_gallery))
        .route(
            "/v1/galleries/{name}",
            get(show_gallery).delete(delete_gallery),
        )
        .route("/v1/galleries/{name}/identities", get(list_identities))
        .route(
            "/v1/galleries/{name}/identities/{identity}/images",
            post(add_images),
        )
        .route(
            "/v1/galleries/{name}/identities/{identity}",
            axum::routing::delete(remove_identity),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.input.body_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// The route pattern `path` matches (`{x}` matches one segment), for metrics labels.
pub fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    ROUTES
        .iter()
        .map(|(_, p)| *p)
        .find(|p| {
            let pattern: Vec<&str> = p.split('/').collect();
            pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
        })
        .unwrap_or("unmatched")
}

/// Authentication (all but the health checks), the in-flight limit, the time limit, and the
/// request's line in the metrics.
async fn guard(State(app): Shared, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(req.uri().path());
    let health = matches!(route, "/healthz" | "/readyz");
    let response = if health {
        next.run(req).await
    } else {
        guarded(&app, req, next).await
    };
    app.metrics
        .request(route, response.status().as_u16(), started.elapsed());
    response
}

async fn guarded(app: &App, req: Request, next: Next) -> Response {
    if let Err(e) = authorize(app, &req) {
        drain(req).await;
        return e.into_response();
    }
    let Ok(_permit) = app.slots.clone().try_acquire_owned() else {
        app.metrics.refused("overloaded");
        drain(req).await;
        return ApiError::unavailable(
            "overloaded",
            format!(
                "{} requests are being served, the most this service takes at once; retry",
                app.max_concurrent
            ),
            1,
        )
        .into_response();
    };
    match tokio::time::timeout(app.timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            app.metrics.refused("timeout");
            ApiError::unavailable(
                "timeout",
                format!(
                    "the request took longer than {:.1} s and was abandoned",
                    app.timeout.as_secs_f64()
                ),
                1,
            )
            .into_response()
        }
    }
}

fn authorize(app: &App, req: &Request) -> Result<(), ApiError> {
    let Some(expected) = &app.token else {
        return Ok(());
    };
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("this service needs `Authorization: Bearer TOKEN`"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthorized(
                "the Authorization header must be `Bearer TOKEN`",
            ))
        }
    };
    // Digests of equal length, compared in constant time: neither the token's length nor
    // its first wrong byte shows in the timing.
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if bool::from(digest.ct_eq(expected)) {
        Ok(())
    } else {
        Err(unauthorized("wrong token"))
    }
}

async fn not_found(req: Request) -> ApiError {
    let message = format!(
        "no route {} {} (see /openapi.json)",
        req.method(),
        req.uri().path()
    );
    drain(req).await;
    ApiError::not_found("not_found", message)
}

async fn method_not_allowed(method: Method, req: Request) -> ApiError {
    drain(req).await;
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this route does not take {method} (see /openapi.json)"),
    )
}

// ---------------------------------------------------------------- health, metrics, docs

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(app): Shared) -> Result<Json<Value>, ApiError> {
    if app.ready.load(Ordering::SeqCst) {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(ApiError::unavailable(
            "shutting_down",
            "the service is shutting down",
            1,
        ))
    }
}

async fn metrics(State(app): Shared) -> Response {
    let galleries = gauges(&app.store);
    let in_flight = app
        .max_concurrent
        .saturating_sub(app.slots.available_permits());
    let text = app.metrics.render(&galleries, in_flight);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

fn gauges(store: &Store) -> Vec<GalleryGauge> {
    store
        .list()
        .iter()
        .map(|c| {
            let g = c.gallery();
            GalleryGauge {
                name: c.name().to_string(),
                images: g.len(),
                identities: g.identities().len(),
            }
        })
        .collect()
}

async fn openapi(State(app): Shared) -> Json<Value> {
    Json(crate::openapi::document(&crate::openapi::Described {
        input: app.input,
        max_concurrent: app.max_concurrent,
        timeout: app.timeout,
        token: app.token.is_some(),
    }))
}

// ---------------------------------------------------------------- encoding

impl App {
    /// The input limits of one request.
    fn limits(&self) -> &InputLimits {
        &self.input
    }

    /// Decodes and preprocesses uploads on a blocking thread.
    async fn decode(&self, uploads: Vec<Upload>) -> Result<Vec<f32>, ApiError> {
        let model = self.model.clone();
        let max_pixels = self.input.pixels;
        blocking(move || decode_all(&uploads, &model.meta.preprocess, max_pixels)).await?
    }

    /// A threshold given in the request (checked), else the service's.
    fn threshold(&self, given: Option<f32>) -> Result<Option<f32>, ApiError> {
        match given {
            Some(t) => check_threshold(t)
                .map(Some)
                .map_err(|e| ApiError::bad_request("invalid_parameter", e.to_string())),
            None => Ok(self.threshold),
        }
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>, ApiError> {
        self.store.get(name).ok_or_else(|| {
            ApiError::not_found("gallery_not_found", format!("no gallery named `{name}`"))
        })
    }
}

/// Runs `f` on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoGallery(_) => ApiError::not_found("gallery_not_found", e.to_string()),
            StoreError::NoIdentity { .. } => {
                ApiError::not_found("identity_not_found", e.to_string())
            }
            StoreError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "gallery_exists", e.to_string())
            }
            StoreError::Io { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                format!("the change was not made: {e}"),
            ),
            StoreError::Infer(_) => ApiError::internal(e.to_string()),
        }
    }
}

async fn verify(State(app): Shared, req: Request) -> Result<Json<Value>, ApiError> {
    let mut form = Form::read(req, &["a", "b"], app.limits()).await?;
    let a = form.one("a")?;
    let b = form.one("b")?;
    let Some(threshold) = app.threshold(form.number("threshold")?)? else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_threshold",
            "the model has no calibrated threshold: give `threshold`",
        ));
    };
    let ticket = app.batcher.preparing();
    let pixels = app.decode(vec![a, b]).await?;
    let rows = app
        .batcher
        .embed(pixels, 2, app.model.meta.tta, ticket)
        .await?;
    let r = app.model.row_len();
    let (Some(ra), Some(rb)) = (rows.get(..r), rows.get(r..2 * r)) else {
        return Err(ApiError::internal(format!(
            "the encoder gave {} values for two images of {r}",
            rows.len()
        )));
    };
    let v = Verdict::at(app.model.distance(ra, rb), threshold);
    Ok(Json(json!({
        "distance": v.distance,
        "same": v.same,
        "threshold": v.threshold,
    })))
}

async fn embed(State(app): Shared, req: Request) -> Result<Json<Value>, ApiError> {
    let mut form = Form::read(req, &["image", "images"], app.limits()).await?;
    let mut uploads = form.take("image");
    uploads.extend(form.take("images"));
    if uploads.is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            "no image: send `image` (or several as `images`)",
        ));
    }
    let n = uploads.len();
    let ticket = app.batcher.preparing();
    let pixels = app.decode(uploads).await?;
    let rows = app
        .batcher
        .embed(pixels, n, app.model.meta.tta, ticket)
        .await?;
    let r = app.model.row_len();
    let embeddings: Vec<&[f32]> = rows.chunks(r.max(1)).collect();
    Ok(Json(json!({
        "tta": app.model.meta.tta.name(),
        "shape": app.model.embedding_shape(n),
        "embeddings": embeddings,
    })))
}

async fn identify(State(app): Shared, req: Request) -> Result<Json<Value>, ApiError> {
    let mut form = Form::read(req, &["image"], app.limits()).await?;
    let image = form.one("image")?;
    let name = form
        .text("gallery")?
        .unwrap_or_else(|| DEFAULT_GALLERY.to_string());
    names::check_gallery(&name).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    let top: usize = form.number("top")?.unwrap_or(1);
    if !(1..=MAX_TOP).contains(&top) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("`top` must be from 1 to {MAX_TOP}"),
        ));
    }
    let threshold = app.threshold(form.number("threshold")?)?;
    let collection = app.collection(&name)?;
    let gallery = collection.gallery();
    let ticket = app.batcher.preparing();
    let pixels = app.decode(vec![image]).await?;
    let probe = app.batcher.embed(pixels, 1, gallery.tta(), ticket).await?;
    let result = rank(gallery, probe, top, threshold).await?;
    Ok(Json(json!({
        "gallery": name,
        "identity": result.name(),
        "known": result.identity.is_some(),
        "threshold": result.threshold,
        "candidates": result.candidates,
    })))
}

async fn rank(
    gallery: Arc<Gallery>,
    probe: Vec<f32>,
    top: usize,
    threshold: Option<f32>,
) -> Result<Identification, ApiError> {
    if gallery.is_empty() {
        return Ok(Identification::decide(Vec::new(), threshold));
    }
    let ranked = blocking(move || gallery.rank(&probe, top)).await?;
    let candidates = ranked
        .map_err(|e| ApiError::internal(e.to_string()))?
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok(Identification::decide(candidates, threshold))
}

// ---------------------------------------------------------------- galleries

fn gallery_name(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = p.map_err(|e| ApiError::bad_request("invalid_name", e.body_text()))?;
    names::check_gallery(&name).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    Ok(name)
}

fn gallery_and_identity(
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path((name, identity)) =
        p.map_err(|e| ApiError::bad_request("invalid_name", e.body_text()))?;
    names::check_gallery(&name).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    names::check_identity(&identity).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    Ok((name, identity))
}

fn summary(c: &Collection) -> Value {
    let g = c.gallery();
    json!({
        "name": c.name(),
        "images": g.len(),
        "identities": g.identities().len(),
        "tta": g.tta().name(),
    })
}

async fn list_galleries(State(app): Shared) -> Json<Value> {
    let list: Vec<Value> = app.store.list().iter().map(|c| summary(c)).collect();
    Json(json!({ "galleries": list, "durable": app.store.is_durable() }))
}

async fn create_gallery(State(app): Shared, req: Request) -> Result<Response, ApiError> {
    let body = read_json(req, app.input.body_bytes).await?;
    let name = match body.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_request("bad_json", "`name` must be a string")),
        None => {
            return Err(ApiError::bad_request(
                "missing_field",
                "send {\"name\": NAME}",
            ))
        }
    };
    names::check_gallery(&name).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    let app2 = app.clone();
    let collection = blocking(move || app2.store.create(&name)).await??;
    Ok((StatusCode::CREATED, Json(summary(&collection))).into_response())
}

async fn show_gallery(
    State(app): Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = gallery_name(p)?;
    let collection = app.collection(&name)?;
    Ok(Json(summary(&collection)))
}

async fn delete_gallery(
    State(app): Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = gallery_name(p)?;
    let app2 = app.clone();
    let n = name.clone();
    blocking(move || app2.store.delete(&n)).await??;
    Ok(Json(json!({ "deleted": name })))
}

async fn list_identities(
    State(app): Shared,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let name = gallery_name(p)?;
    let g = app.collection(&name)?.gallery();
    let list: Vec<Value> = g
        .identities()
        .iter()
        .zip(g.rows_per_identity())
        .map(|(id, n)| json!({ "name": id, "images": n }))
        .collect();
    Ok(Json(json!({ "gallery": name, "identities": list })))
}

async fn add_images(
    State(app): Shared,
    p: Result<Path<(String, String)>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let checked = gallery_and_identity(p)
        .and_then(|(name, identity)| Ok((app.collection(&name)?, name, identity)));
    let (collection, name, identity) = match checked {
        Ok(c) => c,
        Err(e) => {
            drain(req).await;
            return Err(e);
        }
    };
    let mut form = Form::read(req, &["image", "images"], app.limits()).await?;
    let mut uploads = form.take("image");
    uploads.extend(form.take("images"));
    if uploads.is_empty() {
        return Err(ApiError::bad_request(
            "missing_field",
            "no image: send `image` (or several as `images`)",
        ));
    }
    let n = uploads.len();
    let paths: Vec<String> = uploads.iter().map(|u| u.name.clone()).collect();
    let tta = collection.gallery().tta();
    let ticket = app.batcher.preparing();
    let pixels = app.decode(uploads).await?;
    let rows = app.batcher.embed(pixels, n, tta, ticket).await?;
    let id = identity.clone();
    let c = collection.clone();
    let added = blocking(move || c.add(&id, &rows, paths)).await??;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "gallery": name,
            "identity": identity,
            "added": n,
            "identity_images": added.identity_images,
            "images": added.images,
        })),
    )
        .into_response())
}

async fn remove_identity(
    State(app): Shared,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let (name, identity) = gallery_and_identity(p)?;
    let collection = app.collection(&name)?;
    let id = identity.clone();
    let removed = blocking(move || collection.remove_identity(&id)).await??;
    Ok(Json(
        json!({ "gallery": name, "identity": identity, "removed": removed }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_route_patterns() {
        assert_eq!(route_label("/v1/verify"), "/v1/verify");
        assert_eq!(route_label("/v1/galleries/x"), "/v1/galleries/{name}");
        assert_eq!(
            route_label("/v1/galleries/x/identities/y/images"),
            "/v1/galleries/{name}/identities/{identity}/images"
        );
        assert_eq!(route_label("/v1/galleries//identities"), "unmatched");
        assert_eq!(route_label("/nope"), "unmatched");
    }
}
