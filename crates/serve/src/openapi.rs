//! `GET /openapi.json`: the service described as OpenAPI 3.0, written by hand (every route
//! of [`crate::api::ROUTES`] is in it; a test checks).

use crate::api::{DEFAULT_GALLERY, MAX_TOP};
use crate::input::InputLimits;
use serde_json::{json, Value};
use std::time::Duration;

/// The stable error codes, with their statuses.
pub const ERROR_CODES: &[(&str, u16, &str)] = &[
    (
        "bad_json",
        400,
        "the body is not a JSON object of the expected fields",
    ),
    (
        "bad_base64",
        400,
        "an image field of a JSON body is not base64",
    ),
    (
        "bad_multipart",
        400,
        "the multipart body is malformed or cut short",
    ),
    ("bad_request", 400, "the body could not be read"),
    ("missing_field", 400, "a required field or image is missing"),
    (
        "invalid_parameter",
        400,
        "a field has a value out of range (top, threshold)",
    ),
    (
        "invalid_name",
        400,
        "a gallery or identity name is not allowed (path-like, odd characters)",
    ),
    ("bad_image", 400, "an image cannot be decoded"),
    ("unauthorized", 401, "the bearer token is missing or wrong"),
    ("not_found", 404, "no such route"),
    ("gallery_not_found", 404, "no gallery of that name"),
    (
        "identity_not_found",
        404,
        "no identity of that name in the gallery",
    ),
    (
        "method_not_allowed",
        405,
        "the route does not take this method",
    ),
    ("gallery_exists", 409, "a gallery of that name exists"),
    ("body_too_large", 413, "the body is over the size limit"),
    (
        "image_too_large",
        413,
        "an image's header declares more pixels than the limit",
    ),
    (
        "too_many_images",
        413,
        "more images in one request than the limit",
    ),
    (
        "unsupported_media_type",
        415,
        "the body is neither multipart/form-data nor JSON",
    ),
    (
        "no_threshold",
        422,
        "the model has no calibrated threshold and the request gave none",
    ),
    (
        "internal",
        500,
        "the service failed (not the request's fault)",
    ),
    (
        "storage",
        500,
        "the disk refused a gallery change; it was not made",
    ),
    (
        "overloaded",
        503,
        "too many requests in flight; retry after Retry-After seconds",
    ),
    (
        "timeout",
        503,
        "the request took longer than the time limit",
    ),
    ("shutting_down", 503, "the service is stopping"),
];

fn error_responses(codes: &[u16]) -> Value {
    let mut out = serde_json::Map::new();
    for &status in codes {
        let which: Vec<&str> = ERROR_CODES
            .iter()
            .filter(|c| c.1 == status)
            .map(|c| c.0)
            .collect();
        out.insert(
            status.to_string(),
            json!({
                "description": format!("error; code one of: {}", which.join(", ")),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }),
        );
    }
    Value::Object(out)
}

fn with_errors(ok: (&str, Value), codes: &[u16]) -> Value {
    let mut r = error_responses(codes);
    if let Value::Object(m) = &mut r {
        m.insert(ok.0.to_string(), ok.1);
    }
    r
}

fn text_ok(description: &str) -> Value {
    json!({"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}})
}

fn json_ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// A request body of images (multipart file parts, or base64 in JSON) and other fields.
fn image_body(images: &[(&str, &str)], fields: Value) -> Value {
    let mut mp = serde_json::Map::new();
    let mut js = serde_json::Map::new();
    for (name, what) in images {
        mp.insert(
            name.to_string(),
            json!({"type": "string", "format": "binary", "description": what}),
        );
        js.insert(
            name.to_string(),
            json!({"type": "string", "format": "byte", "description": format!("{what}, base64 (or a data: URL)")}),
        );
    }
    if let Value::Object(f) = &fields {
        for (k, v) in f {
            mp.insert(k.clone(), v.clone());
            js.insert(k.clone(), v.clone());
        }
    }
    json!({
        "required": true,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": mp}},
            "application/json": {"schema": {"type": "object", "properties": js}},
        }
    })
}

fn secured(op: Value, secured: bool) -> Value {
    let mut op = op;
    if !secured {
        op["security"] = json!([]);
    }
    op
}

/// What the document says of the service's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Described {
    /// The input limits.
    pub input: InputLimits,
    /// Requests in flight at most.
    pub max_concurrent: usize,
    /// Time per request.
    pub timeout: Duration,
    /// Whether a bearer token is required.
    pub token: bool,
}

/// The OpenAPI document of the service as configured.
pub fn document(app: &Described) -> Value {
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}, "description": "gallery name (no `..`)"});
    let identity_param = json!({"name": "identity", "in": "path", "required": true, "schema": {"type": "string"}, "description": "identity name: letters, digits, spaces, - _ . ' , (no paths)"});
    let gallery_summary = json!({"$ref": "#/components/schemas/Gallery"});
    let images_field = [
        ("image", "one image (PNG, JPEG, PGM/PPM)"),
        (
            "images",
            "several images (repeat the part, or a JSON array)",
        ),
    ];
    let limits = &app.input;
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "siamese serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Face verification, embedding and identification with a siamese model, and \
                 durable galleries. Errors are JSON {{\"code\", \"message\"}} with a stable code. \
                 Limits: {} bytes per body, {} pixels per image, {} images per request, {} \
                 requests in flight (then 503 with Retry-After), {:.0} s per request.",
                limits.body_bytes, limits.pixels, limits.images, app.max_concurrent,
                app.timeout.as_secs_f64()
            ),
        },
        "security": if app.token { json!([{"bearer": []}]) } else { json!([]) },
        "paths": {
            "/healthz": {"get": secured(json!({
                "summary": "liveness: the process answers",
                "responses": {"200": json_ok("alive", json!({"type": "object"}))},
            }), false)},
            "/readyz": {"get": secured(json!({
                "summary": "readiness: the model is loaded, galleries recovered, not shutting down",
                "responses": with_errors(("200", json_ok("ready", json!({"type": "object"}))), &[503]),
            }), false)},
            "/metrics": {"get": {
                "summary": "Prometheus text: requests by route and status, latency histograms, encoder batch sizes, gallery sizes",
                "responses": with_errors(("200", text_ok("metrics")), &[401, 503]),
            }},
            "/openapi.json": {"get": {
                "summary": "this document",
                "responses": with_errors(("200", json_ok("OpenAPI 3.0", json!({"type": "object"}))), &[401, 503]),
            }},
            "/v1/verify": {"post": {
                "summary": "are two images of one identity? (as `siamese verify --json`)",
                "requestBody": image_body(
                    &[("a", "first image"), ("b", "second image")],
                    json!({"threshold": {"type": "number", "description": "decide at this threshold instead of the model's"}}),
                ),
                "responses": with_errors(("200", json_ok("the verdict", json!({"$ref": "#/components/schemas/Verdict"}))), &[400, 401, 413, 415, 422, 500, 503]),
            }},
            "/v1/embed": {"post": {
                "summary": "the model's representations of images",
                "requestBody": image_body(&images_field, json!({})),
                "responses": with_errors(("200", json_ok("one representation per image, in order", json!({
                    "type": "object",
                    "properties": {
                        "tta": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                    }
                }))), &[400, 401, 413, 415, 500, 503]),
            }},
            "/v1/identify": {"post": {
                "summary": "who is this? the nearest identities of a gallery, or unknown",
                "requestBody": image_body(
                    &[("image", "the probe image")],
                    json!({
                        "gallery": {"type": "string", "default": DEFAULT_GALLERY},
                        "top": {"type": "integer", "minimum": 1, "maximum": MAX_TOP, "default": 1},
                        "threshold": {"type": "number", "description": "unknown unless the nearest is below it (default: the model's)"},
                    }),
                ),
                "responses": with_errors(("200", json_ok("the identification", json!({"$ref": "#/components/schemas/Identification"}))), &[400, 401, 404, 413, 415, 500, 503]),
            }},
            "/v1/galleries": {
                "get": {
                    "summary": "list the galleries",
                    "responses": with_errors(("200", json_ok("galleries", json!({
                        "type": "object",
                        "properties": {"galleries": {"type": "array", "items": gallery_summary}, "durable": {"type": "boolean"}},
                    }))), &[401, 503]),
                },
                "post": {
                    "summary": "create an empty gallery",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}},
                    }}}},
                    "responses": with_errors(("201", json_ok("created", gallery_summary.clone())), &[400, 401, 409, 413, 500, 503]),
                },
            },
            "/v1/galleries/{name}": {
                "parameters": [name_param.clone()],
                "get": {
                    "summary": "one gallery's size",
                    "responses": with_errors(("200", json_ok("the gallery", gallery_summary.clone())), &[400, 401, 404, 503]),
                },
                "delete": {
                    "summary": "delete a gallery and everything enrolled in it",
                    "responses": with_errors(("200", json_ok("deleted", json!({"type": "object", "properties": {"deleted": {"type": "string"}}}))), &[400, 401, 404, 500, 503]),
                },
            },
            "/v1/galleries/{name}/identities": {
                "parameters": [name_param.clone()],
                "get": {
                    "summary": "the gallery's identities and their image counts",
                    "responses": with_errors(("200", json_ok("identities", json!({
                        "type": "object",
                        "properties": {
                            "gallery": {"type": "string"},
                            "identities": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "images": {"type": "integer"}}}},
                        },
                    }))), &[400, 401, 404, 503]),
                },
            },
            "/v1/galleries/{name}/identities/{identity}/images": {
                "parameters": [name_param.clone(), identity_param.clone()],
                "post": {
                    "summary": "enrol images of an identity (created when new); durable once answered",
                    "requestBody": image_body(&images_field, json!({})),
                    "responses": with_errors(("201", json_ok("enrolled", json!({
                        "type": "object",
                        "properties": {
                            "gallery": {"type": "string"}, "identity": {"type": "string"},
                            "added": {"type": "integer"}, "identity_images": {"type": "integer"},
                            "images": {"type": "integer"},
                        },
                    }))), &[400, 401, 404, 413, 415, 500, 503]),
                },
            },
            "/v1/galleries/{name}/identities/{identity}": {
                "parameters": [name_param, identity_param],
                "delete": {
                    "summary": "remove an identity and its images; durable once answered",
                    "responses": with_errors(("200", json_ok("removed", json!({
                        "type": "object",
                        "properties": {"gallery": {"type": "string"}, "identity": {"type": "string"}, "removed": {"type": "integer"}},
                    }))), &[400, 401, 404, 500, 503]),
                },
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": ERROR_CODES.iter().map(|c| c.0).collect::<Vec<_>>()},
                        "message": {"type": "string"},
                    },
                },
                "Verdict": {
                    "type": "object",
                    "properties": {
                        "distance": {"type": "number"},
                        "same": {"type": "boolean", "description": "distance < threshold"},
                        "threshold": {"type": "number"},
                    },
                },
                "Identification": {
                    "type": "object",
                    "properties": {
                        "gallery": {"type": "string"},
                        "identity": {"type": "string", "description": "the nearest identity, or \"unknown\""},
                        "known": {"type": "boolean"},
                        "threshold": {"type": "number", "nullable": true},
                        "candidates": {"type": "array", "items": {"type": "object", "properties": {"identity": {"type": "string"}, "distance": {"type": "number"}}}},
                    },
                },
                "Gallery": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"}, "images": {"type": "integer"},
                        "identities": {"type": "integer"}, "tta": {"type": "string"},
                    },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ROUTES;

    #[test]
    fn every_route_is_described_with_its_method() {
        let doc = document(&Described {
            input: InputLimits {
                body_bytes: 1,
                pixels: 1,
                images: 1,
            },
            max_concurrent: 1,
            timeout: Duration::from_secs(1),
            token: true,
        });
        for (method, path) in ROUTES {
            let op = &doc["paths"][path][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {path} is not in the document");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
        }
        let described: usize = doc["paths"]
            .as_object()
            .map(|p| {
                p.values()
                    .flat_map(|v| v.as_object().into_iter().flat_map(|o| o.keys()))
                    .filter(|k| *k != "parameters")
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(described, ROUTES.len());
    }
}
