//! Reading a request's images and fields, from `multipart/form-data` (image fields as file
//! parts, other fields as text) or from a JSON object (images as base64 strings, optionally
//! `data:` URLs), and decoding the images: the size from the header first, then the pixels.

use crate::error::ApiError;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use base64::Engine;
use serde_json::Value;
use siamese_data::Preprocess;
use std::collections::BTreeMap;

/// The request limits that concern one request's input.
#[derive(Clone, Copy, Debug)]
pub struct InputLimits {
    /// Bytes in a request body.
    pub body_bytes: usize,
    /// Pixels in one image (width times height, from its header).
    pub pixels: u64,
    /// Images in one request.
    pub images: usize,
}

/// One uploaded image, still encoded.
#[derive(Debug)]
pub struct Upload {
    /// The field it came in (`a`, `b`, `image`, `images`).
    pub field: String,
    /// The file name the client gave, else the field's name (for messages and gallery paths).
    pub name: String,
    /// The encoded image.
    pub bytes: Vec<u8>,
}

/// A request's input: its images, in order, and its other fields.
#[derive(Debug, Default)]
pub struct Form {
    /// The images.
    pub images: Vec<Upload>,
    /// Other fields (multipart text parts arrive as strings).
    pub fields: BTreeMap<String, Value>,
}

/// The longest text field of a multipart form.
const MAX_TEXT_FIELD: usize = 4096;

fn bad_json(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("bad_json", message)
}

impl Form {
    /// Reads `req`'s body as multipart or JSON. `image_fields` are the fields holding images
    /// (a JSON field may hold one base64 string or an array of them).
    pub async fn read(
        req: Request,
        image_fields: &[&str],
        limits: &InputLimits,
    ) -> Result<Form, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        check_length(&req, limits)?;
        let form = if content_type.starts_with("multipart/form-data") {
            Self::multipart(req, image_fields, limits).await?
        } else if content_type.starts_with("application/json") || content_type.is_empty() {
            Self::json(req, image_fields, limits.body_bytes).await?
        } else {
            drain(req).await;
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "content type `{content_type}`: send multipart/form-data or application/json"
                ),
            ));
        };
        if form.images.len() > limits.images {
            return Err(ApiError::too_large(
                "too_many_images",
                format!(
                    "more than {} images in one request; send at most {}",
                    limits.images, limits.images
                ),
            ));
        }
        Ok(form)
    }

    async fn multipart(
        req: Request,
        image_fields: &[&str],
        limits: &InputLimits,
    ) -> Result<Form, ApiError> {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("bad_multipart", e.body_text()))?;
        let mut form = Form::default();
        let fail = |e: axum::extract::multipart::MultipartError| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                body_too_large(limits)
            } else {
                ApiError::bad_request(
                    "bad_multipart",
                    format!("multipart body: {}", e.body_text()),
                )
            }
        };
        while let Some(field) = mp.next_field().await.map_err(fail)? {
            let name = field.name().unwrap_or("").to_string();
            if image_fields.contains(&name.as_str()) {
                let file = field.file_name().map(str::to_string);
                let bytes = field.bytes().await.map_err(fail)?;
                // Past the limit the rest of the body is still read (within the body limit),
                // so the client gets its answer rather than a reset connection.
                if form.images.len() <= limits.images {
                    form.images.push(Upload {
                        name: file.unwrap_or_else(|| name.clone()),
                        field: name,
                        bytes: bytes.to_vec(),
                    });
                }
            } else {
                let bytes = field.bytes().await.map_err(fail)?;
                if bytes.len() > MAX_TEXT_FIELD {
                    return Err(ApiError::bad_request(
                        "bad_multipart",
                        format!("field `{name}` is longer than {MAX_TEXT_FIELD} bytes"),
                    ));
                }
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::bad_request("bad_multipart", format!("field `{name}` is not UTF-8"))
                })?;
                form.fields.insert(name, Value::String(text));
            }
        }
        Ok(form)
    }

    async fn json(req: Request, image_fields: &[&str], limit: usize) -> Result<Form, ApiError> {
        let value = read_json(req, limit).await?;
        let Value::Object(object) = value else {
            return Err(bad_json("the body must be a JSON object"));
        };
        let mut form = Form::default();
        for (key, value) in object {
            if !image_fields.contains(&key.as_str()) {
                form.fields.insert(key, value);
                continue;
            }
            let items = match value {
                Value::String(s) => vec![s],
                Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        _ => Err(bad_json(format!("`{key}` must hold base64 strings"))),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(bad_json(format!(
                        "`{key}` must be a base64 string (or an array of them)"
                    )))
                }
            };
            for (i, s) in items.iter().enumerate() {
                let bytes = base64_image(s).map_err(|e| {
                    ApiError::bad_request("bad_base64", format!("`{key}` (image {i}): {e}"))
                })?;
                form.images.push(Upload {
                    field: key.clone(),
                    name: key.clone(),
                    bytes,
                });
            }
        }
        Ok(form)
    }

    /// The images of field `field`.
    pub fn take(&mut self, field: &str) -> Vec<Upload> {
        let (mine, rest) = std::mem::take(&mut self.images)
            .into_iter()
            .partition(|u| u.field == field);
        self.images = rest;
        mine
    }

    /// Exactly one image of `field`.
    pub fn one(&mut self, field: &str) -> Result<Upload, ApiError> {
        let mut v = self.take(field);
        match v.len() {
            1 => Ok(v.remove(0)),
            0 => Err(ApiError::bad_request(
                "missing_field",
                format!("the image field `{field}` is missing"),
            )),
            n => Err(ApiError::bad_request(
                "invalid_parameter",
                format!("{n} images in field `{field}`; give one"),
            )),
        }
    }

    /// A text field.
    pub fn text(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`{field}` must be a string"),
            )),
        }
    }

    /// A number field (a JSON number, or a string holding one).
    pub fn number<T: std::str::FromStr>(&self, field: &str) -> Result<Option<T>, ApiError> {
        let text = match self.fields.get(field) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.trim().to_string(),
            Some(_) => String::new(),
        };
        text.parse().map(Some).map_err(|_| {
            ApiError::bad_request("invalid_parameter", format!("`{field}` must be a number"))
        })
    }
}

fn body_too_large(limits: &InputLimits) -> ApiError {
    ApiError::too_large(
        "body_too_large",
        format!(
            "the request body is over the limit of {} bytes",
            limits.body_bytes
        ),
    )
}

/// The largest body [`drain`] reads.
const LINGER_BYTES: u64 = 1 << 20;

/// Reads and discards the body of a request refused before its body was read, when it is
/// small (declared at most 1 MiB) and comes within a second: a client that sends its whole
/// body before reading the answer then gets the answer, not a connection reset under its
/// upload. Larger or undeclared bodies are left unread.
pub async fn drain(req: Request) {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > 0 && n <= LINGER_BYTES) {
        let body = axum::body::to_bytes(req.into_body(), LINGER_BYTES as usize);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), body).await;
    }
}

/// Refuses a body whose declared length is over the limit before reading any of it.
fn check_length(req: &Request, limits: &InputLimits) -> Result<(), ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.body_bytes as u64) {
        return Err(body_too_large(limits));
    }
    Ok(())
}

/// Reads a JSON body of at most `limit` bytes.
pub async fn read_json(req: Request, limit: usize) -> Result<Value, ApiError> {
    if check_length(
        &req,
        &InputLimits {
            body_bytes: limit,
            pixels: 0,
            images: 0,
        },
    )
    .is_err()
    {
        return Err(ApiError::too_large(
            "body_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        ));
    }
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
            if too_large {
                ApiError::too_large(
                    "body_too_large",
                    format!("the request body is over the limit of {limit} bytes"),
                )
            } else {
                ApiError::bad_request("bad_request", format!("reading the body: {e}"))
            }
        })?;
    if bytes.is_empty() {
        return Err(bad_json("the body is empty; send a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad_json(format!("malformed JSON: {e}")))
}

/// Decodes base64 (standard or URL-safe alphabet, padded or not, optionally a `data:` URL).
fn base64_image(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    let s = match s.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(";base64,")
            .map(|(_, data)| data)
            .ok_or("a data: URL without `;base64,`")?,
        None => s,
    };
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    standard
        .decode(s.trim())
        .or_else(|_| url_safe.decode(s.trim()))
        .map_err(|e| format!("not base64: {e}"))
}

/// Decodes `upload` and preprocesses it into `out` as `pre` says. The size is read from the
/// header and checked against `max_pixels` before any pixel is decoded (a 20000x20000 PNG of a
/// few hundred bytes is refused here); then `siamese_data::decode` decodes it (with its own
/// header check and limits).
pub fn decode_into(
    upload: &Upload,
    pre: &Preprocess,
    max_pixels: u64,
    out: &mut [f32],
) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_image", format!("`{}`: {m}", upload.name));
    if upload.bytes.is_empty() {
        return Err(bad("the image is empty".into()));
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(&upload.bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad(
            "unrecognised image format (expected PNG, JPEG or PGM/PPM)".into(),
        ));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("unreadable image header: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ApiError::too_large(
            "image_too_large",
            format!(
                "`{}` is {w}x{h} ({} pixels), over the limit of {max_pixels} pixels per image",
                upload.name,
                u64::from(w) * u64::from(h)
            ),
        ));
    }
    let img = siamese_data::decode(&upload.bytes, &upload.name)
        .map_err(|e| ApiError::bad_request("bad_image", e.to_string()))?;
    pre.apply_into(&img, out);
    Ok(())
}

/// Decodes and preprocesses `uploads` into one buffer, image after image.
pub fn decode_all(
    uploads: &[Upload],
    pre: &Preprocess,
    max_pixels: u64,
) -> Result<Vec<f32>, ApiError> {
    let per = pre.tensor_len();
    let mut out = vec![0f32; per * uploads.len()];
    for (u, slot) in uploads.iter().zip(out.chunks_mut(per.max(1))) {
        decode_into(u, pre, max_pixels, slot)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_in_its_usual_spellings() {
        assert_eq!(base64_image("aGk=").as_deref(), Ok(&b"hi"[..]));
        assert_eq!(base64_image("aGk").as_deref(), Ok(&b"hi"[..]));
        assert_eq!(
            base64_image("data:image/png;base64,aGk=").as_deref(),
            Ok(&b"hi"[..])
        );
        assert_eq!(base64_image("_-8=").as_deref(), Ok(&[0xff, 0xef][..]));
        assert!(base64_image("not base64!").is_err());
        assert!(base64_image("data:image/png,xyz").is_err());
    }

    #[test]
    fn a_huge_header_is_refused_before_decoding() {
        // A PNG of a few dozen bytes whose header claims 20000x20000 pixels.
        fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let crc = crc32fast::hash(&out[start..]);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = 20000u32.to_be_bytes().repeat(2);
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(
            &mut png,
            b"IDAT",
            &[0x78, 0x01, 0x01, 0, 0, 0xff, 0xff, 0, 0, 0, 1],
        );
        chunk(&mut png, b"IEND", &[]);
        let upload = Upload {
            field: "image".into(),
            name: "bomb.png".into(),
            bytes: png,
        };
        let pre = Preprocess::new(1, 32, 32);
        let mut out = vec![0f32; pre.tensor_len()];
        let e = decode_into(&upload, &pre, 4_000_000, &mut out).err();
        assert_eq!(e.map(|e| e.code), Some("image_too_large"));
    }
}
