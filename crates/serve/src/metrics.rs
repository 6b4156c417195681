//! The service's counters, rendered as Prometheus text by `GET /metrics`: requests by route
//! and status, request latency by route, encoder batches (images and requests per pass, time
//! per pass), requests refused for load, and (filled in at scrape time) gallery sizes.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, seconds.
const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch-size buckets (images or requests per encoder pass).
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A Prometheus histogram: cumulative bucket counts are produced when rendered.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_images: Histogram,
    batch_requests: Histogram,
    batch_seconds: Histogram,
    refused: BTreeMap<&'static str, u64>,
}

/// The counters (one lock; every update is a few additions).
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                batch_images: Histogram::new(SIZES),
                batch_requests: Histogram::new(SIZES),
                batch_seconds: Histogram::new(LATENCY),
                refused: BTreeMap::new(),
            }),
        }
    }
}

/// The size of one gallery, for the gauges.
#[derive(Clone, Debug)]
pub struct GalleryGauge {
    /// The collection's name.
    pub name: String,
    /// Enrolled images.
    pub images: usize,
    /// Identities.
    pub identities: usize,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only counters behind: keep counting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request answered on `route` (the route's pattern) with `status` after `elapsed`.
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        let mut m = self.lock();
        *m.requests.entry((route.to_string(), status)).or_insert(0) += 1;
        m.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY))
            .observe(elapsed.as_secs_f64());
    }

    /// One encoder pass over `images` images of `requests` requests, taking `elapsed`.
    pub fn batch(&self, images: usize, requests: usize, elapsed: Duration) {
        let mut m = self.lock();
        m.batch_images.observe(images as f64);
        m.batch_requests.observe(requests as f64);
        m.batch_seconds.observe(elapsed.as_secs_f64());
    }

    /// One request refused before it ran, for `reason` (`overloaded`, `timeout`).
    pub fn refused(&self, reason: &'static str) {
        *self.lock().refused.entry(reason).or_insert(0) += 1;
    }

    /// The largest number of images one encoder pass has taken so far.
    pub fn largest_batch(&self) -> usize {
        let m = self.lock();
        let h = &m.batch_images;
        h.counts
            .iter()
            .zip(h.bounds)
            .rev()
            .find(|(c, _)| **c > 0)
            .map_or(0, |(_, b)| *b as usize)
    }

    /// The Prometheus text exposition of everything, with `galleries`' sizes and the number
    /// of requests in flight.
    pub fn render(&self, galleries: &[GalleryGauge], in_flight: usize) -> String {
        let m = self.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP siamese_http_requests_total Requests answered, by route and status.\n",
        );
        out.push_str("# TYPE siamese_http_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "siamese_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str(
            "# HELP siamese_http_request_duration_seconds Time from a request's arrival to its \
             answer, by route.\n",
        );
        out.push_str("# TYPE siamese_http_request_duration_seconds histogram\n");
        for (route, h) in &m.latency {
            h.render(
                &mut out,
                "siamese_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        out.push_str("# HELP siamese_batch_images Images encoded per encoder pass.\n");
        out.push_str("# TYPE siamese_batch_images histogram\n");
        m.batch_images.render(&mut out, "siamese_batch_images", "");
        out.push_str("# HELP siamese_batch_requests Requests served per encoder pass.\n");
        out.push_str("# TYPE siamese_batch_requests histogram\n");
        m.batch_requests
            .render(&mut out, "siamese_batch_requests", "");
        out.push_str("# HELP siamese_batch_seconds Time per encoder pass.\n");
        out.push_str("# TYPE siamese_batch_seconds histogram\n");
        m.batch_seconds
            .render(&mut out, "siamese_batch_seconds", "");
        out.push_str(
            "# HELP siamese_requests_refused_total Requests refused before they ran, by reason.\n",
        );
        out.push_str("# TYPE siamese_requests_refused_total counter\n");
        for reason in ["overloaded", "timeout"] {
            let n = m.refused.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "siamese_requests_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP siamese_requests_in_flight Requests being served now.\n");
        out.push_str("# TYPE siamese_requests_in_flight gauge\n");
        let _ = writeln!(out, "siamese_requests_in_flight {in_flight}");
        out.push_str("# HELP siamese_gallery_images Images enrolled, by gallery.\n");
        out.push_str("# TYPE siamese_gallery_images gauge\n");
        for g in galleries {
            let _ = writeln!(
                out,
                "siamese_gallery_images{{gallery=\"{}\"}} {}",
                escape(&g.name),
                g.images
            );
        }
        out.push_str("# HELP siamese_gallery_identities Identities enrolled, by gallery.\n");
        out.push_str("# TYPE siamese_gallery_identities gauge\n");
        for g in galleries {
            let _ = writeln!(
                out,
                "siamese_gallery_identities{{gallery=\"{}\"}} {}",
                escape(&g.name),
                g.identities
            );
        }
        out
    }
}

/// A label value as Prometheus quotes it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_histograms_and_counters() {
        let m = Metrics::default();
        m.request("/v1/verify", 200, Duration::from_millis(3));
        m.request("/v1/verify", 200, Duration::from_millis(30));
        m.batch(6, 3, Duration::from_millis(20));
        m.refused("overloaded");
        let text = m.render(
            &[GalleryGauge {
                name: "a\"b".into(),
                images: 4,
                identities: 2,
            }],
            1,
        );
        assert!(text.contains("siamese_http_requests_total{route=\"/v1/verify\",status=\"200\"} 2"));
        assert!(text.contains(
            "siamese_http_request_duration_seconds_bucket{route=\"/v1/verify\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "siamese_http_request_duration_seconds_bucket{route=\"/v1/verify\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("siamese_batch_images_bucket{le=\"8\"} 1"));
        assert!(text.contains("siamese_batch_images_count 1"));
        assert!(text.contains("siamese_requests_refused_total{reason=\"overloaded\"} 1"));
        assert!(text.contains("siamese_gallery_images{gallery=\"a\\\"b\"} 4"));
        assert_eq!(m.largest_batch(), 8);
    }
}
