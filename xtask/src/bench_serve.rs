//! The service rows of `cargo xtask bench`: `siamese serve` with a model of the att-faces
//! recipe (conv4 at 56×46, hflip test-time augmentation, its taps), `POST /v1/verify` of AT&T
//! pairs from 1, 8 and 32 concurrent clients on loopback, with batching (the default) and
//! without (`--no-batch`): requests/s, p50 and p99 latency, and requests per encoder pass
//! (from the service's `/metrics`). Each client keeps one connection and sends its next
//! request when the last is answered, for a fixed time per row after a warm-up.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Concurrent clients of each row.
pub const CLIENTS: &[usize] = &[1, 8, 32];

/// The rows' Markdown and JSON.
pub struct Report {
    /// A section of the report.
    pub md: String,
    /// The numbers.
    pub json: serde_json::Value,
}

/// One row: a mode and a client count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Whether concurrent requests share encoder passes.
    pub batched: bool,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests answered in the timed window.
    pub requests: usize,
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Requests per encoder pass, on average.
    pub requests_per_pass: f64,
    /// The fraction of the window the encoder thread spent encoding.
    pub encoder_busy: f64,
    /// Answers other than 200.
    pub errors: usize,
}

/// A running `siamese serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(exe: &Path, args: &[String], threads: usize) -> Result<Server> {
        let mut child = Command::new(exe)
            .arg("--threads")
            .arg(threads.to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(Ok(addr.to_string()));
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            let _ = tx.send(Err(seen));
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(addr)) => Ok(Server { child, addr }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("siamese serve did not start: {other:?}")
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BOUNDARY: &str = "siamese-bench-boundary";

/// A multipart body with images `a` and `b`.
fn verify_body(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in [("a", a), ("b", b)] {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}.pgm\"\r\nContent-Type: image/x-portable-graymap\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The value of a series in Prometheus text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Requests encoded, encoder passes and seconds spent encoding so far.
fn passes(agent: &ureq::Agent, addr: &str) -> Result<(f64, f64, f64)> {
    let text = agent
        .get(&format!("http://{addr}/metrics"))
        .call()?
        .into_string()?;
    Ok((
        metric(&text, "siamese_batch_requests_sum"),
        metric(&text, "siamese_batch_requests_count"),
        metric(&text, "siamese_batch_seconds_sum"),
    ))
}

/// The `q` quantile of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// `clients` clients sending verify requests (`bodies`, in turn) for `seconds` after a
/// warm-up: the row.
fn sweep(
    addr: &str,
    bodies: &[Vec<u8>],
    clients: usize,
    seconds: f64,
    batched: bool,
) -> Result<Row> {
    let url = format!("http://{addr}/v1/verify");
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let warm_up = Duration::from_secs_f64((seconds / 4.0).clamp(0.5, 2.0));
    let window = Duration::from_secs_f64(seconds);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let start = Instant::now() + Duration::from_millis(50);
    let (timed_from, timed_to) = (start + warm_up, start + warm_up + window);
    let mut before = None;
    let results: Vec<Result<(Vec<f64>, usize)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (url, content_type) = (&url, &content_type);
                scope.spawn(move || -> Result<(Vec<f64>, usize)> {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(60))
                        .build();
                    let (mut latencies, mut errors) = (Vec::new(), 0);
                    std::thread::sleep(start.saturating_duration_since(Instant::now()));
                    let mut i = c;
                    loop {
                        let sent = Instant::now();
                        if sent >= timed_to {
                            break;
                        }
                        let r = agent
                            .post(url)
                            .set("Content-Type", content_type)
                            .send_bytes(&bodies[i % bodies.len()]);
                        let ok = match r {
                            Ok(r) => r.into_string().is_ok(),
                            Err(_) => false,
                        };
                        let done = Instant::now();
                        if sent >= timed_from && done <= timed_to {
                            if ok {
                                latencies.push((done - sent).as_secs_f64());
                            } else {
                                errors += 1;
                            }
                        }
                        i += clients;
                    }
                    Ok((latencies, errors))
                })
            })
            .collect();
        std::thread::sleep(timed_from.saturating_duration_since(Instant::now()));
        before = passes(&agent, addr).ok();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let after = passes(&agent, addr)?;
    let mut latencies = Vec::new();
    let mut errors = 0;
    for r in results {
        let (l, e) = r?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_by(f64::total_cmp);
    let (req0, pass0, busy0) = before.unwrap_or((0.0, 0.0, 0.0));
    Ok(Row {
        batched,
        clients,
        requests: latencies.len(),
        requests_per_sec: latencies.len() as f64 / window.as_secs_f64(),
        p50_ms: 1e3 * quantile(&latencies, 0.5),
        p99_ms: 1e3 * quantile(&latencies, 0.99),
        requests_per_pass: (after.0 - req0) / (after.1 - pass0).max(1.0),
        encoder_busy: (after.2 - busy0) / window.as_secs_f64(),
        errors,
    })
}

/// Trains a model of the att-faces recipe for a few steps (its timings do not depend on the
/// weights) and times the service with and without batching; `seconds` per row.
pub fn run(exe: &Path, work: &Path, threads: usize, seconds: f64) -> Result<Report> {
    let att = crate::eval::root().join("../shared/data/att_faces");
    let model = work.join("serve-att-faces.safetensors");
    eprintln!("serve: training an att-faces recipe model (3 steps) for the service rows");
    let status = Command::new(exe)
        .args(["--threads", &threads.to_string(), "train", "--data"])
        .arg(&att)
        .args([
            "--classes",
            "s1-s20",
            "--recipe",
            "att-faces",
            "--steps",
            "3",
            "--quiet",
            "--checkpoint-every",
            "0",
            "--out",
        ])
        .arg(&model)
        .stdout(Stdio::null())
        .status()
        .context("cannot run siamese train")?;
    if !status.success() {
        bail!("siamese train for the service rows failed");
    }
    let pairs: Vec<(PathBuf, PathBuf)> = (1..=20)
        .map(|s| {
            (
                att.join(format!("s{s}/{}.pgm", s % 10 + 1)),
                att.join(format!("s{}/{}.pgm", s % 20 + 1, (s + 3) % 10 + 1)),
            )
        })
        .collect();
    let bodies: Vec<Vec<u8>> = pairs
        .iter()
        .map(|(a, b)| -> Result<Vec<u8>> {
            Ok(verify_body(
                &std::fs::read(a).with_context(|| format!("cannot read {}", a.display()))?,
                &std::fs::read(b).with_context(|| format!("cannot read {}", b.display()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for batched in [true, false] {
        let mut args: Vec<String> = ["serve", "--model"].map(String::from).to_vec();
        args.push(model.display().to_string());
        // Decided at a fixed threshold: a model trained for three steps may have none.
        args.extend(
            [
                "--addr",
                "127.0.0.1:0",
                "--threshold",
                "1",
                "--max-concurrent",
                "1024",
            ]
            .map(String::from),
        );
        if !batched {
            args.push("--no-batch".into());
        }
        let server = Server::start(exe, &args, threads)?;
        for &clients in CLIENTS {
            eprintln!(
                "serve: verify, {clients} clients, {}",
                if batched { "batched" } else { "--no-batch" }
            );
            rows.push(sweep(&server.addr, &bodies, clients, seconds, batched)?);
        }
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.batched { "batched" } else { "--no-batch" }.to_string(),
                r.clients.to_string(),
                format!("{:.1}", r.requests_per_sec),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.p99_ms),
                format!("{:.2}", r.requests_per_pass),
                format!("{:.0}%", 100.0 * r.encoder_busy),
                r.errors.to_string(),
            ]
        })
        .collect();
    let at = |batched: bool, clients: usize| {
        rows.iter()
            .find(|r| r.batched == batched && r.clients == clients)
            .map_or(f64::NAN, |r| r.requests_per_sec)
    };
    let speedup = at(true, 32) / at(false, 32);
    let mut md = format!(
        "\n## Service (`siamese serve`)\n\n`POST /v1/verify` of AT&T pairs (multipart), an \
         att-faces recipe model (conv4 56×46, hflip: 4 encoder passes per request), {threads} \
         kernel threads, clients on the same machine over loopback, each sending its next request \
         when the last is answered; {seconds:.0} s per row after a warm-up. Batched: concurrent \
         requests share encoder passes of up to 16 (waiting at most 2 ms). At 32 clients batching \
         serves {speedup:.2}× the requests/s of `--no-batch`.\n\n"
    );
    md.push_str(&crate::bench::markdown_table(
        &[
            "mode",
            "clients",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "requests per encoder pass",
            "encoder busy",
            "errors",
        ],
        &table,
    ));
    Ok(Report {
        md,
        json: serde_json::json!({"rows": rows, "speedup_at_32": speedup, "seconds_per_row": seconds, "threads": threads}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_metrics_are_read() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
        let text = "siamese_batch_requests_sum 12\nsiamese_batch_requests_count 4\n";
        assert_eq!(metric(text, "siamese_batch_requests_sum"), 12.0);
        assert_eq!(metric(text, "siamese_batch_requests_count"), 4.0);
        let body = verify_body(b"A", b"B");
        assert!(body.ends_with(format!("--{BOUNDARY}--\r\n").as_bytes()));
    }

    /// The service rows alone, against the release binary (build it first):
    /// `cargo test -p xtask --release bench_serve -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn service_rows() -> Result<()> {
        let exe = crate::eval::root().join("target/release/siamese");
        let work = crate::eval::root().join("target/bench/work");
        std::fs::create_dir_all(&work)?;
        let seconds = std::env::var("SERVE_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5.0);
        let r = run(&exe, &work, 2, seconds)?;
        println!("{}\n{}", r.md, serde_json::to_string_pretty(&r.json)?);
        Ok(())
    }
}
