//! `siamese serve` end to end: the real binary on a free loopback port, a tiny freshly trained
//! model, AT&T faces from `../shared/data`, and a real HTTP client (ureq). Every loop here is
//! bounded in count and time, and every server is killed when its test ends.

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "correct-horse-battery-staple";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siamese"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn att() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/att_faces")
}

fn face(subject: usize, image: usize) -> PathBuf {
    att().join(format!("s{subject}/{image}.pgm"))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}

/// Runs the binary to success; its stdout.
fn ok(args: &[&str]) -> Result<String> {
    let out = bin().args(args).output().context("cannot run siamese")?;
    ensure!(
        out.status.success(),
        "siamese {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A tiny model (the demo recipe, 2 steps, 56x46, calibrated on held-out classes), trained
/// once per run of this file.
fn model() -> Result<PathBuf> {
    static MODEL: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut m = MODEL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = &*m {
        return Ok(p.clone());
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-tests");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tiny.safetensors");
    let data = att();
    ok(&[
        "train",
        "--data",
        s(&data),
        "--classes",
        "s1-s6",
        "--recipe",
        "demo",
        "--steps",
        "2",
        "--input-size",
        "56x46",
        "--quiet",
        "--out",
        s(&path),
    ])?;
    *m = Some(path.clone());
    Ok(path)
}

/// A running `siamese serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
    /// The thread copying stderr into `log` (done once the process has ended).
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Result<Server> {
        let mut child = bin()
            .args(["serve", "--model", s(model), "--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start siamese serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut server = Server {
            child,
            addr: String::new(),
            log,
            reader: Some(reader),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => server.addr = addr,
            Err(_) => {
                let _ = server.child.kill();
                let _ = server.child.wait();
                std::thread::sleep(Duration::from_millis(100));
                bail!("the server did not start: {}", server.log());
            }
        }
        Ok(server)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGKILL: no chance to flush anything.
    fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits (at most 30 s) for the process to end.
    fn terminate(&mut self) -> Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        ensure!(
            unsafe { libc::kill(pid, libc::SIGTERM) } == 0,
            "kill failed"
        );
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Everything it wrote is in the log once the reader has seen the end.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the server did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client with a bounded time per request.
fn client() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// A status and body, whatever the status.
struct Reply {
    status: u16,
    body: String,
    retry_after: Option<String>,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }

    /// Checks a 4xx with a JSON error body of this `code`.
    fn error(&self, status: u16, code: &str) -> Result<()> {
        ensure!(
            self.status == status,
            "expected {status} {code}, got {} {}",
            self.status,
            self.body
        );
        let v = self.json()?;
        ensure!(v["code"] == code, "expected code {code}, got {v}");
        ensure!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {v}"
        );
        Ok(())
    }

    /// Checks a 2xx and gives its JSON.
    fn ok(&self) -> Result<Value> {
        ensure!(
            (200..300).contains(&self.status),
            "expected success, got {} {}",
            self.status,
            self.body
        );
        self.json()
    }
}

fn reply(r: std::result::Result<ureq::Response, ureq::Error>) -> Result<Reply> {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    Ok(Reply {
        status: r.status(),
        retry_after: r.header("Retry-After").map(str::to_string),
        body: r.into_string()?,
    })
}

/// A request with an optional bearer token.
fn req(agent: &ureq::Agent, method: &str, url: &str, token: Option<&str>) -> ureq::Request {
    let r = agent.request(method, url);
    match token {
        Some(t) => r.set("Authorization", &format!("Bearer {t}")),
        None => r,
    }
}

fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<Reply> {
    reply(req(agent, "GET", url, token).call())
}

fn send_json(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Reply> {
    reply(
        req(agent, method, url, token)
            .set("Content-Type", "application/json")
            .send_string(&body.to_string()),
    )
}

const BOUNDARY: &str = "siamese-test-7MA4YWxkTrZu0gW";

/// A multipart/form-data body: `(field, file name, bytes)` per part (a file name makes a file
/// part).
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn send_multipart(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    parts: &[(&str, Option<&str>, &[u8])],
) -> Result<Reply> {
    reply(
        req(agent, "POST", url, token)
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .send_bytes(&multipart(parts)),
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// One raw HTTP/1.1 exchange (for requests a well-behaved client would not send): the status
/// and body of the answer.
fn raw(addr: &str, request: &[u8]) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request)?;
    read_response(&mut stream)
}

fn read_response(stream: &mut TcpStream) -> Result<(u16, String)> {
    let mut text = Vec::new();
    stream.read_to_end(&mut text)?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    Ok((status, body))
}

/// `siamese verify --json` of two images.
fn cli_verify(model: &Path, a: &Path, b: &Path) -> Result<Value> {
    Ok(serde_json::from_str(
        ok(&["verify", "--model", s(model), s(a), s(b), "--json"])?.trim(),
    )?)
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-6,
        _ => false,
    }
}

/// Checks a verify answer against the command line's.
fn same_verdict(served: &Value, cli: &Value) -> Result<()> {
    ensure!(
        close(&served["distance"], &cli["distance"])
            && served["same"] == cli["same"]
            && close(&served["threshold"], &cli["threshold"]),
        "served {served} but the command line says {cli}"
    );
    Ok(())
}

/// Images per identity of a gallery.
fn identity_counts(
    agent: &ureq::Agent,
    server: &Server,
    gallery: &str,
    token: Option<&str>,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let v = get(
        agent,
        &server.url(&format!("/v1/galleries/{gallery}/identities")),
        token,
    )?
    .ok()?;
    let list = v["identities"].as_array().context("no identities")?;
    Ok(list
        .iter()
        .filter_map(|i| Some((i["name"].as_str()?.to_string(), i["images"].as_u64()?)))
        .collect())
}

/// A counter of a Prometheus text (the first line starting with `series`).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn every_route_answers_over_http_as_the_command_line_does() -> Result<()> {
    let model = model()?;
    let dir = tempfile::tempdir()?;
    // A gallery enrolled by the command line, served as `default`.
    let known = dir.path().join("known");
    for subject in 1..=3 {
        let d = known.join(format!("s{subject}"));
        std::fs::create_dir_all(&d)?;
        for i in 1..=2 {
            std::fs::copy(face(subject, i), d.join(format!("{i}.pgm")))?;
        }
    }
    let gallery = dir.path().join("known.safetensors");
    ok(&[
        "enroll",
        "--model",
        s(&model),
        "--gallery",
        s(&known),
        "--out",
        s(&gallery),
    ])?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let store = dir.path().join("store");
    let server = Server::start(
        &model,
        &[
            "--store",
            s(&store),
            "--gallery",
            s(&gallery),
            "--token-file",
            s(&token_file),
        ],
    )?;
    let agent = client();
    let t = Some(TOKEN);

    // The help starts with an example.
    let help = ok(&["serve", "--help"])?;
    ensure!(help.starts_with("Example: siamese serve --model"), "{help}");

    // Health checks need no token.
    ensure!(get(&agent, &server.url("/healthz"), None)?.ok()?["status"] == "ok");
    ensure!(get(&agent, &server.url("/readyz"), None)?.ok()?["status"] == "ready");

    // The OpenAPI document lists every route with its method.
    let doc = get(&agent, &server.url("/openapi.json"), t)?.ok()?;
    let routes = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("post", "/v1/verify"),
        ("post", "/v1/embed"),
        ("post", "/v1/identify"),
        ("get", "/v1/galleries"),
        ("post", "/v1/galleries"),
        ("get", "/v1/galleries/{name}"),
        ("delete", "/v1/galleries/{name}"),
        ("get", "/v1/galleries/{name}/identities"),
        ("post", "/v1/galleries/{name}/identities/{identity}/images"),
        ("delete", "/v1/galleries/{name}/identities/{identity}"),
    ];
    for (method, path) in routes {
        ensure!(
            doc["paths"][path][method]["responses"].is_object(),
            "/openapi.json lacks {method} {path}"
        );
    }
    ensure!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));

    // verify: multipart and JSON, each as `siamese verify --json` says.
    let (a, b, c) = (face(1, 1), face(1, 2), face(2, 1));
    let url = server.url("/v1/verify");
    let served = send_multipart(
        &agent,
        &url,
        t,
        &[
            ("a", Some("a.pgm"), &read(&a)?),
            ("b", Some("b.pgm"), &read(&b)?),
        ],
    )?
    .ok()?;
    same_verdict(&served, &cli_verify(&model, &a, &b)?)?;
    let served = send_json(
        &agent,
        "POST",
        &url,
        t,
        &json!({"a": b64(&read(&a)?), "b": b64(&read(&c)?)}),
    )?
    .ok()?;
    same_verdict(&served, &cli_verify(&model, &a, &c)?)?;
    // A threshold given with the request decides instead of the model's.
    let served = send_json(
        &agent,
        "POST",
        &url,
        t,
        &json!({"a": b64(&read(&a)?), "b": b64(&read(&c)?), "threshold": 0.0}),
    )?
    .ok()?;
    ensure!(
        served["same"] == false && served["threshold"] == 0.0,
        "{served}"
    );

    // embed: the encodings `siamese embed` writes.
    let npy = dir.path().join("e.npy");
    ok(&[
        "embed",
        "--model",
        s(&model),
        s(&a),
        s(&c),
        "--out",
        s(&npy),
    ])?;
    let bytes = read(&npy)?;
    let cli_rows: Vec<f32> = bytes[bytes.len() - 2 * 128 * 4..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let served = send_multipart(
        &agent,
        &server.url("/v1/embed"),
        t,
        &[
            ("images", Some("a.pgm"), &read(&a)?),
            ("images", Some("c.pgm"), &read(&c)?),
        ],
    )?
    .ok()?;
    ensure!(served["shape"] == json!([2, 128]), "{}", served["shape"]);
    let rows: Vec<f64> = served["embeddings"]
        .as_array()
        .context("no embeddings")?
        .iter()
        .flat_map(|r| r.as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_f64())
        .collect();
    ensure!(rows.len() == cli_rows.len());
    for (x, y) in rows.iter().zip(&cli_rows) {
        ensure!((x - f64::from(*y)).abs() < 1e-6, "embedding {x} vs {y}");
    }
    let one = send_json(
        &agent,
        "POST",
        &server.url("/v1/embed"),
        t,
        &json!({"image": format!("data:image/x-portable-graymap;base64,{}", b64(&read(&a)?))}),
    )?
    .ok()?;
    ensure!(one["shape"] == json!([1, 128]));

    // identify against the `--gallery` file (the default collection), as `siamese identify`.
    let probe = face(2, 5);
    let cli: Value = serde_json::from_str(
        ok(&[
            "identify",
            "--model",
            s(&model),
            "--gallery",
            s(&gallery),
            s(&probe),
            "--top",
            "3",
            "--json",
        ])?
        .trim(),
    )?;
    let served = send_multipart(
        &agent,
        &server.url("/v1/identify"),
        t,
        &[
            ("image", Some("p.pgm"), &read(&probe)?),
            ("top", None, b"3"),
        ],
    )?
    .ok()?;
    ensure!(served["gallery"] == "default" && served["identity"] == cli["identity"]);
    let (sc, cc) = (&served["candidates"], &cli["candidates"]);
    ensure!(sc.as_array().map(Vec::len) == Some(3), "{served}");
    for i in 0..3 {
        ensure!(
            sc[i]["identity"] == cc[i]["identity"] && close(&sc[i]["distance"], &cc[i]["distance"]),
            "served {served}, command line {cli}"
        );
    }

    // Galleries: create, list, enrol, list identities, identify, remove, delete.
    let galleries = server.url("/v1/galleries");
    let created = send_json(&agent, "POST", &galleries, t, &json!({"name": "staff"}))?;
    ensure!(created.status == 201, "{}", created.body);
    send_json(&agent, "POST", &galleries, t, &json!({"name": "staff"}))?
        .error(409, "gallery_exists")?;
    for (subject, images) in [(3, vec![1, 2, 3]), (4, vec![1, 2])] {
        let bytes: Vec<Vec<u8>> = images
            .iter()
            .map(|&i| read(&face(subject, i)))
            .collect::<Result<_>>()?;
        let parts: Vec<(&str, Option<&str>, &[u8])> = bytes
            .iter()
            .map(|b| ("image", Some("x.pgm"), b.as_slice()))
            .collect();
        let r = send_multipart(
            &agent,
            &server.url(&format!("/v1/galleries/staff/identities/s{subject}/images")),
            t,
            &parts,
        )?;
        ensure!(r.status == 201, "{}", r.body);
        ensure!(r.json()?["identity_images"] == images.len());
    }
    // JSON enrolment adds to an identity.
    let r = send_json(
        &agent,
        "POST",
        &server.url("/v1/galleries/staff/identities/s4/images"),
        t,
        &json!({"images": [b64(&read(&face(4, 3))?)]}),
    )?;
    ensure!(
        r.status == 201 && r.json()?["identity_images"] == 3,
        "{}",
        r.body
    );
    let list = get(&agent, &galleries, t)?.ok()?;
    let names: Vec<&str> = list["galleries"]
        .as_array()
        .context("no galleries")?
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    ensure!(names == ["default", "staff"], "{list}");
    ensure!(list["durable"] == true);
    let shown = get(&agent, &server.url("/v1/galleries/staff"), t)?.ok()?;
    ensure!(shown["images"] == 6 && shown["identities"] == 2, "{shown}");
    let ids = get(&agent, &server.url("/v1/galleries/staff/identities"), t)?.ok()?;
    ensure!(
        ids["identities"] == json!([{"name": "s3", "images": 3}, {"name": "s4", "images": 3}]),
        "{ids}"
    );
    let who = send_json(
        &agent,
        "POST",
        &server.url("/v1/identify"),
        t,
        &json!({"image": b64(&read(&face(3, 7))?), "gallery": "staff", "top": 2}),
    )?
    .ok()?;
    ensure!(
        who["candidates"].as_array().map(Vec::len) == Some(2),
        "{who}"
    );
    // Nothing is below a zero threshold: unknown.
    let unknown = send_json(
        &agent,
        "POST",
        &server.url("/v1/identify"),
        t,
        &json!({"image": b64(&read(&face(3, 7))?), "gallery": "staff", "threshold": 0}),
    )?
    .ok()?;
    ensure!(
        unknown["identity"] == "unknown" && unknown["known"] == false,
        "{unknown}"
    );
    let removed = reply(
        req(
            &agent,
            "DELETE",
            &server.url("/v1/galleries/staff/identities/s3"),
            t,
        )
        .call(),
    )?
    .ok()?;
    ensure!(removed["removed"] == 3, "{removed}");
    reply(
        req(
            &agent,
            "DELETE",
            &server.url("/v1/galleries/staff/identities/s3"),
            t,
        )
        .call(),
    )?
    .error(404, "identity_not_found")?;
    let ids = get(&agent, &server.url("/v1/galleries/staff/identities"), t)?.ok()?;
    ensure!(
        ids["identities"] == json!([{"name": "s4", "images": 3}]),
        "{ids}"
    );

    // Metrics: requests by route and status, latency, batches, gallery sizes.
    let text = get(&agent, &server.url("/metrics"), t)?;
    ensure!(text.status == 200);
    let text = text.body;
    for series in [
        "siamese_http_requests_total{route=\"/v1/verify\",status=\"200\"}",
        "siamese_http_requests_total{route=\"/v1/galleries\",status=\"409\"}",
        "siamese_http_request_duration_seconds_count{route=\"/v1/identify\"}",
        "siamese_batch_images_count",
        "siamese_gallery_images{gallery=\"staff\"}",
        "siamese_gallery_identities{gallery=\"default\"}",
    ] {
        ensure!(metric(&text, series).is_some(), "no {series} in\n{text}");
    }
    ensure!(metric(&text, "siamese_gallery_images{gallery=\"staff\"}") == Some(3.0));
    ensure!(metric(&text, "siamese_gallery_images{gallery=\"default\"}") == Some(6.0));

    let deleted = reply(req(&agent, "DELETE", &server.url("/v1/galleries/staff"), t).call())?;
    ensure!(deleted.ok()?["deleted"] == "staff");
    get(&agent, &server.url("/v1/galleries/staff"), t)?.error(404, "gallery_not_found")?;
    send_json(
        &agent,
        "POST",
        &server.url("/v1/identify"),
        t,
        &json!({"image": b64(&read(&a)?), "gallery": "staff"}),
    )?
    .error(404, "gallery_not_found")?;
    // The deleted collection's folder is gone; the default's stays.
    let folders = std::fs::read_dir(store.join("galleries"))?.count();
    ensure!(folders == 1, "{folders} folders left in the store");
    Ok(())
}

#[test]
fn concurrent_load_is_batched_and_matches_the_command_line() -> Result<()> {
    let model = model()?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let server = Server::start(&model, &["--store", s(&store)])?;
    let agent = client();
    send_json(
        &agent,
        "POST",
        &server.url("/v1/galleries"),
        None,
        &json!({"name": "g"}),
    )?
    .ok()?;
    for subject in 1..=4 {
        send_multipart(
            &agent,
            &server.url(&format!("/v1/galleries/g/identities/s{subject}/images")),
            None,
            &[("image", Some("1.pgm"), &read(&face(subject, 1))?)],
        )?
        .ok()?;
    }
    // Pairs of images and what the command line says of each.
    let pairs: Vec<(PathBuf, PathBuf)> = vec![
        (face(1, 2), face(1, 3)),
        (face(1, 2), face(2, 3)),
        (face(2, 4), face(2, 5)),
        (face(3, 4), face(4, 5)),
        (face(3, 6), face(3, 7)),
        (face(4, 8), face(1, 9)),
    ];
    let expected: Vec<Value> = pairs
        .iter()
        .map(|(a, b)| cli_verify(&model, a, b))
        .collect::<Result<_>>()?;
    let images: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .map(|(a, b)| Ok((read(a)?, read(b)?)))
        .collect::<Result<_>>()?;
    let (images, expected) = (Arc::new(images), Arc::new(expected));
    let (clients, per_client) = (8, 125);
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let verified = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (images, expected, failures, verified) = (
                images.clone(),
                expected.clone(),
                failures.clone(),
                verified.clone(),
            );
            let url = |p: &str| format!("http://{}{p}", server.addr);
            let (verify, identify, embed, list) = (
                url("/v1/verify"),
                url("/v1/identify"),
                url("/v1/embed"),
                url("/v1/galleries/g/identities"),
            );
            std::thread::spawn(move || {
                let agent = client();
                for i in 0..per_client {
                    let k = (c * per_client + i) % images.len();
                    let (a, b) = &images[k];
                    let kind = (c + i) % 10;
                    let r = match kind {
                        0..=2 => send_multipart(
                            &agent,
                            &verify,
                            None,
                            &[("a", Some("a.pgm"), a), ("b", Some("b.pgm"), b)],
                        ),
                        3..=5 => send_json(
                            &agent,
                            "POST",
                            &verify,
                            None,
                            &json!({"a": b64(a), "b": b64(b)}),
                        ),
                        6 | 7 => send_multipart(
                            &agent,
                            &identify,
                            None,
                            &[
                                ("image", Some("p.pgm"), a),
                                ("gallery", None, b"g"),
                                ("top", None, b"2"),
                            ],
                        ),
                        8 => send_json(
                            &agent,
                            "POST",
                            &embed,
                            None,
                            &json!({"images": [b64(a), b64(b)]}),
                        ),
                        _ => get(&agent, &list, None),
                    };
                    let outcome = r.and_then(|r| {
                        let v = r.ok()?;
                        if kind <= 5 {
                            same_verdict(&v, &expected[k])?;
                            verified.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    });
                    if let Err(e) = outcome {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("client {c}, request {i}: {e:#}"));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a client panicked"))?;
    }
    let elapsed = started.elapsed();
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        clients * per_client,
        &failures[..failures.len().min(5)]
    );
    let verifies = (0..clients)
        .flat_map(|c| (0..per_client).map(move |i| (c + i) % 10))
        .filter(|&k| k <= 5)
        .count();
    ensure!(verified.load(Ordering::Relaxed) == verifies);
    let text = get(&agent, &server.url("/metrics"), None)?.body;
    ensure!(!text.contains("status=\"5"), "5xx answers in\n{text}");
    let passes = metric(&text, "siamese_batch_requests_count").context("no batch count")?;
    let single = metric(&text, "siamese_batch_requests_bucket{le=\"1\"}").context("no bucket")?;
    let requests = metric(&text, "siamese_batch_requests_sum").context("no batch sum")?;
    eprintln!(
        "{} requests from {clients} clients in {:.2} s; {requests} encoder requests in {passes} \
         passes ({single} of a single request)",
        clients * per_client,
        elapsed.as_secs_f64()
    );
    ensure!(
        single < passes,
        "no encoder pass served more than one request:\n{text}"
    );
    Ok(())
}

/// Appends a torn record (a header promising more than follows) to the collection's log.
fn tear_log(store: &Path) -> Result<()> {
    for entry in std::fs::read_dir(store.join("galleries"))? {
        let dir = entry?.path();
        for f in std::fs::read_dir(&dir)? {
            let f = f?.path();
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("log.") {
                let mut file = std::fs::OpenOptions::new().append(true).open(&f)?;
                file.write_all(&1000u32.to_le_bytes())?;
                file.write_all(&[0xab; 40])?;
                return Ok(());
            }
        }
    }
    bail!("no log file under {}", store.display())
}

#[test]
fn kill_9_while_clients_enrol_keeps_every_acknowledged_enrolment() -> Result<()> {
    let model = model()?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let mut server = Server::start(&model, &["--store", s(&store)])?;
    let agent = client();
    send_json(
        &agent,
        "POST",
        &server.url("/v1/galleries"),
        None,
        &json!({"name": "g"}),
    )?
    .ok()?;
    let images: Arc<Vec<Vec<u8>>> =
        Arc::new((1..=10).map(|i| read(&face(5, i))).collect::<Result<_>>()?);
    let clients = 4;
    // Per client: acknowledged enrolments, and whether one was cut off unanswered.
    let acked: Arc<Vec<AtomicUsize>> =
        Arc::new((0..clients).map(|_| AtomicUsize::new(0)).collect());
    let cut = Arc::new(
        (0..clients)
            .map(|_| AtomicBool::new(false))
            .collect::<Vec<_>>(),
    );
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (images, acked, cut) = (images.clone(), acked.clone(), cut.clone());
            let url = server.url(&format!("/v1/galleries/g/identities/client{c}/images"));
            std::thread::spawn(move || {
                let agent = client();
                for i in 0..400 {
                    // Two images per enrolment: a half-written one would show as an odd count.
                    let (a, b) = (&images[i % 10], &images[(i + 1) % 10]);
                    let r = send_multipart(
                        &agent,
                        &url,
                        None,
                        &[("image", Some("a.pgm"), a), ("image", Some("b.pgm"), b)],
                    );
                    match r {
                        Ok(r) if r.status == 201 => {
                            acked[c].fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            cut[c].store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acked
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .sum::<usize>()
        < 60
    {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "enrolment too slow: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9()?;
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a client panicked"))?;
    }
    let check = |counts: &std::collections::BTreeMap<String, u64>| -> Result<()> {
        for c in 0..clients {
            let n = counts.get(&format!("client{c}")).copied().unwrap_or(0);
            let a = acked[c].load(Ordering::SeqCst) as u64;
            let cut_off = cut[c].load(Ordering::SeqCst);
            ensure!(
                n == 2 * a || (cut_off && n == 2 * (a + 1)),
                "client {c}: {a} enrolments acknowledged, the gallery holds {n} images"
            );
        }
        Ok(())
    };
    let mut server = Server::start(&model, &["--store", s(&store)])?;
    let counts = identity_counts(&agent, &server, "g", None)?;
    check(&counts)?;
    eprintln!("after kill -9: {counts:?}");

    // A record torn half-way (as a crash mid-write leaves it) is ignored, and the log goes on
    // after the last whole record.
    server.kill9()?;
    tear_log(&store)?;
    let mut server = Server::start(&model, &["--store", s(&store)])?;
    ensure!(
        server.log().contains("ignored a torn last record"),
        "{}",
        server.log()
    );
    ensure!(identity_counts(&agent, &server, "g", None)? == counts);
    send_multipart(
        &agent,
        &server.url("/v1/galleries/g/identities/late/images"),
        None,
        &[("image", Some("a.pgm"), &images[0])],
    )?
    .ok()?;
    server.kill9()?;
    let server = Server::start(&model, &["--store", s(&store)])?;
    let after = identity_counts(&agent, &server, "g", None)?;
    ensure!(after.get("late") == Some(&1), "{after:?}");
    check(&after)?;
    Ok(())
}

#[test]
fn sigterm_finishes_requests_in_flight_then_compacts() -> Result<()> {
    let model = model()?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let mut server = Server::start(&model, &["--store", s(&store)])?;
    let agent = client();
    send_json(
        &agent,
        "POST",
        &server.url("/v1/galleries"),
        None,
        &json!({"name": "g"}),
    )?
    .ok()?;
    send_multipart(
        &agent,
        &server.url("/v1/galleries/g/identities/s1/images"),
        None,
        &[("image", Some("a.pgm"), &read(&face(1, 1))?)],
    )?
    .ok()?;
    // A verify request whose body is half sent when SIGTERM arrives.
    let body = multipart(&[
        ("a", Some("a.pgm"), &read(&face(1, 1))?),
        ("b", Some("b.pgm"), &read(&face(1, 2))?),
    ]);
    let mut slow = TcpStream::connect(&server.addr)?;
    slow.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        slow,
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    slow.write_all(&body[..body.len() / 2])?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = libc::pid_t::try_from(server.child.id())?;
    // SAFETY: kill(2) on our own child with a valid signal.
    ensure!(unsafe { libc::kill(pid, libc::SIGTERM) } == 0);
    // No new connections once stopping (within 10 s, however busy the machine)...
    let signalled = Instant::now();
    while TcpStream::connect(&server.addr).is_ok() {
        ensure!(
            signalled.elapsed() < Duration::from_secs(10),
            "still accepting 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...but the request in flight is answered.
    slow.write_all(&body[body.len() / 2..])?;
    let (status, answer) = read_response(&mut slow)?;
    ensure!(status == 200, "{status} {answer}");
    let v: Value = serde_json::from_str(&answer)?;
    same_verdict(&v, &cli_verify(&model, &face(1, 1), &face(1, 2))?)?;
    let status = server.terminate()?;
    ensure!(status.success(), "exit {status}: {}", server.log());
    ensure!(
        server.log().contains("1 galleries compacted"),
        "{}",
        server.log()
    );
    // Compacted: the snapshot holds everything, the new log nothing but its magic.
    let folder = std::fs::read_dir(store.join("galleries"))?
        .next()
        .context("no collection")??
        .path();
    let mut names: Vec<String> = std::fs::read_dir(&folder)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    ensure!(
        names == ["gallery.00000001.safetensors", "log.00000001", "name"],
        "{names:?}"
    );
    ensure!(std::fs::metadata(folder.join("log.00000001"))?.len() == 8);
    // The snapshot is an ordinary gallery file.
    let probe = face(1, 3);
    let cli: Value = serde_json::from_str(
        ok(&[
            "identify",
            "--model",
            s(&model),
            "--gallery",
            s(&folder.join("gallery.00000001.safetensors")),
            s(&probe),
            "--json",
        ])?
        .trim(),
    )?;
    ensure!(cli["candidates"][0]["identity"] == "s1", "{cli}");
    Ok(())
}

/// A PNG of a few dozen bytes whose header declares 20000 x 20000 pixels.
fn png_bomb() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // A zlib stream of one empty stored block.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn hostile_requests_get_clear_4xx_codes_and_the_service_carries_on() -> Result<()> {
    let model = model()?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let server = Server::start(
        &model,
        &[
            "--token-file",
            s(&token_file),
            "--max-body",
            "1000000",
            "--max-images",
            "4",
        ],
    )?;
    let agent = client();
    let t = Some(TOKEN);
    let verify = server.url("/v1/verify");
    let (a, b) = (read(&face(1, 1))?, read(&face(1, 2))?);
    let healthy = || -> Result<()> {
        ensure!(get(&agent, &server.url("/healthz"), None)?.status == 200);
        Ok(())
    };

    // Tokens: missing, wrong, malformed.
    let r = send_json(
        &agent,
        "POST",
        &verify,
        None,
        &json!({"a": b64(&a), "b": b64(&b)}),
    )?;
    r.error(401, "unauthorized")?;
    send_json(
        &agent,
        "POST",
        &verify,
        Some("wrong"),
        &json!({"a": b64(&a), "b": b64(&b)}),
    )?
    .error(401, "unauthorized")?;
    send_json(
        &agent,
        "POST",
        &verify,
        Some(&TOKEN[..TOKEN.len() - 1]),
        &json!({}),
    )?
    .error(401, "unauthorized")?;
    reply(
        agent
            .get(&server.url("/metrics"))
            .set("Authorization", &format!("Basic {TOKEN}"))
            .call(),
    )?
    .error(401, "unauthorized")?;
    get(&agent, &server.url("/v1/galleries"), None)?.error(401, "unauthorized")?;
    get(&agent, &server.url("/openapi.json"), None)?.error(401, "unauthorized")?;
    healthy()?;

    // Malformed JSON, JSON of the wrong shape, bad base64.
    let bad_json = reply(
        req(&agent, "POST", &verify, t)
            .set("Content-Type", "application/json")
            .send_string("{\"a\": \"abc\", "),
    )?;
    bad_json.error(400, "bad_json")?;
    send_json(&agent, "POST", &verify, t, &json!([1, 2]))?.error(400, "bad_json")?;
    send_json(&agent, "POST", &verify, t, &json!({"a": 5, "b": b64(&b)}))?
        .error(400, "bad_json")?;
    send_json(
        &agent,
        "POST",
        &verify,
        t,
        &json!({"a": "%%% not base64 %%%", "b": b64(&b)}),
    )?
    .error(400, "bad_base64")?;
    send_json(&agent, "POST", &verify, t, &json!({"a": b64(&a)}))?.error(400, "missing_field")?;
    send_json(
        &agent,
        "POST",
        &verify,
        t,
        &json!({"a": b64(&a), "b": b64(b"not an image")}),
    )?
    .error(400, "bad_image")?;
    send_json(
        &agent,
        "POST",
        &verify,
        t,
        &json!({"a": b64(&a), "b": b64(&b), "threshold": -1}),
    )?
    .error(400, "invalid_parameter")?;
    reply(
        req(&agent, "POST", &verify, t)
            .set("Content-Type", "text/plain")
            .send_string("hello"),
    )?
    .error(415, "unsupported_media_type")?;
    healthy()?;

    // A multipart body cut off in the middle of a part.
    let whole = multipart(&[("a", Some("a.pgm"), &a), ("b", Some("b.pgm"), &b)]);
    let truncated = reply(
        req(&agent, "POST", &verify, t)
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .send_bytes(&whole[..whole.len() / 2]),
    )?;
    truncated.error(400, "bad_multipart")?;
    healthy()?;

    // An oversized body, refused from its declared length before any of it is read.
    let (status, body) = raw(
        &server.addr,
        format!(
            "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 50000000\r\nConnection: \
             close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    ensure!(status == 413, "{status} {body}");
    ensure!(serde_json::from_str::<Value>(&body)?["code"] == "body_too_large");
    // ...and one that is sent whole.
    let big = json!({"a": "A".repeat(1_200_000), "b": b64(&b)});
    let r = send_json(&agent, "POST", &verify, t, &big);
    if let Ok(r) = r {
        r.error(413, "body_too_large")?;
    }
    healthy()?;

    // More images than allowed in one request, as multipart and as JSON.
    let parts: Vec<(&str, Option<&str>, &[u8])> = (0..5)
        .map(|_| ("images", Some("a.pgm"), a.as_slice()))
        .collect();
    send_multipart(&agent, &server.url("/v1/embed"), t, &parts)?.error(413, "too_many_images")?;
    let five: Vec<String> = (0..5).map(|_| b64(&a)).collect();
    send_json(
        &agent,
        "POST",
        &server.url("/v1/embed"),
        t,
        &json!({ "images": five }),
    )?
    .error(413, "too_many_images")?;

    // A decompression bomb: refused from its header, as multipart and as JSON.
    let bomb = png_bomb();
    send_multipart(
        &agent,
        &verify,
        t,
        &[("a", Some("bomb.png"), &bomb), ("b", Some("b.pgm"), &b)],
    )?
    .error(413, "image_too_large")?;
    send_json(
        &agent,
        "POST",
        &server.url("/v1/embed"),
        t,
        &json!({"image": b64(&bomb)}),
    )?
    .error(413, "image_too_large")?;
    healthy()?;

    // Path-like names: identity and gallery.
    send_json(
        &agent,
        "POST",
        &server.url("/v1/galleries"),
        t,
        &json!({"name": "g"}),
    )?
    .ok()?;
    // Sent raw: an HTTP client would resolve `..` and `%2e%2e` segments itself.
    for identity in ["..%2Fx", "..", "%2e%2e", "a%2Fb", "a%5Cb", "%00x", "x%0Ay"] {
        for method in ["POST", "DELETE"] {
            let path = match method {
                "POST" => format!("/v1/galleries/g/identities/{identity}/images"),
                _ => format!("/v1/galleries/g/identities/{identity}"),
            };
            let (status, body) = raw(
                &server.addr,
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )?;
            ensure!(status == 400, "{method} {path}: {status} {body}");
            ensure!(
                serde_json::from_str::<Value>(&body)?["code"] == "invalid_name",
                "{method} {path}: {body}"
            );
        }
    }
    ensure!(identity_counts(&agent, &server, "g", t)?.is_empty());
    for name in ["../x", "..", "a/b", ""] {
        send_json(
            &agent,
            "POST",
            &server.url("/v1/galleries"),
            t,
            &json!({ "name": name }),
        )?
        .error(400, "invalid_name")?;
    }
    get(&agent, &server.url("/v1/galleries/..%2Fetc"), t)?.error(400, "invalid_name")?;
    send_json(
        &agent,
        "POST",
        &server.url("/v1/identify"),
        t,
        &json!({"image": b64(&a), "gallery": "../g"}),
    )?
    .error(400, "invalid_name")?;
    get(&agent, &server.url("/v1/nothing"), t)?.error(404, "not_found")?;
    reply(req(&agent, "PUT", &verify, t).call())?.error(405, "method_not_allowed")?;

    // Still serving: a good request gets a good answer.
    let ok = send_multipart(
        &agent,
        &verify,
        t,
        &[("a", Some("a.pgm"), &a), ("b", Some("b.pgm"), &b)],
    )?
    .ok()?;
    same_verdict(&ok, &cli_verify(&model, &face(1, 1), &face(1, 2))?)?;
    ensure!(get(&agent, &server.url("/readyz"), None)?.status == 200);
    Ok(())
}

#[test]
fn requests_past_the_limits_get_503_with_retry_after() -> Result<()> {
    let model = model()?;
    let server = Server::start(&model, &["--max-concurrent", "1", "--timeout", "4"])?;
    let agent = client();
    let a = read(&face(1, 1))?;
    let body = multipart(&[("a", Some("a.pgm"), &a), ("b", Some("b.pgm"), &a)]);
    // A client that sends half its body and stalls holds the one slot...
    let mut slow = TcpStream::connect(&server.addr)?;
    slow.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        slow,
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    slow.write_all(&body[..100])?;
    // ...so the next request is turned away, with Retry-After, before its body is read (a
    // request without one here, so the client is not cut off mid-upload); health checks still
    // answer.
    let waiting = Instant::now();
    let busy = loop {
        // Until the stalled request holds the slot (at once, unless the machine is busy).
        let r = get(&agent, &server.url("/v1/galleries"), None)?;
        if r.status != 200 || waiting.elapsed() > Duration::from_secs(3) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    busy.error(503, "overloaded")?;
    ensure!(
        busy.retry_after.as_deref() == Some("1"),
        "{:?}",
        busy.retry_after
    );
    ensure!(get(&agent, &server.url("/healthz"), None)?.status == 200);
    // The stalled request runs out of time.
    let (status, answer) = read_response(&mut slow)?;
    ensure!(status == 503, "{status} {answer}");
    ensure!(serde_json::from_str::<Value>(&answer)?["code"] == "timeout");
    // And the slot is free again.
    send_multipart(
        &agent,
        &server.url("/v1/verify"),
        None,
        &[("a", Some("a.pgm"), &a), ("b", Some("b.pgm"), &a)],
    )?
    .ok()?;
    Ok(())
}
