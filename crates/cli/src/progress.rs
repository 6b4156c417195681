//! The training observer of the command line: a progress bar on stderr and one line per
//! validation, written so that a newcomer can tell that training works.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use siamese_train::{LogLine, Observer};

/// Draws the bar (unless quiet) and prints notes and validation lines on stderr.
pub struct Progress {
    bar: ProgressBar,
    quiet: bool,
    by_time: bool,
    /// Sums of the losses and active shares of the steps since the last validation line,
    /// and their count: one step's loss is often exactly 0 once most batches are separated.
    since: (f64, f64, u64),
}

impl Progress {
    /// A bar on stderr, or none when `quiet` (notes and validation lines still print).
    pub fn new(quiet: bool) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            quiet,
            by_time: false,
            since: (0.0, 0.0, 0),
        }
    }
}

/// A loss as a person reads it: four significant digits, however small it gets.
fn loss_text(loss: f32) -> String {
    if loss != 0.0 && loss.abs() < 0.01 {
        format!("{loss:.3e}")
    } else {
        format!("{loss:.4}")
    }
}

impl Observer for Progress {
    fn start(&mut self, total_steps: Option<u64>, seconds: Option<f64>) {
        if self.quiet {
            return;
        }
        let (len, template) = match (total_steps, seconds) {
            (None, Some(s)) => {
                self.by_time = true;
                (
                    (s * 10.0) as u64,
                    "{bar:30} {percent}% of the time budget {msg} ETA {eta}",
                )
            }
            (t, _) => (t.unwrap_or(0), "{bar:30} {pos}/{len} {msg} ETA {eta}"),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        self.bar = bar;
    }

    fn note(&mut self, message: &str) {
        self.bar.suspend(|| eprintln!("note: {message}"));
    }

    fn step(&mut self, line: &LogLine, elapsed: f64) {
        let loss = loss_text(line.loss);
        self.since.0 += line.loss as f64;
        self.since.1 += line.active as f64;
        self.since.2 += 1;
        if let Some(v) = &line.validation {
            let n = self.since.2.max(1) as f64;
            let mean = loss_text((self.since.0 / n) as f32);
            let active = 100.0 * self.since.1 / n;
            self.since = (0.0, 0.0, 0);
            self.bar.suspend(|| {
                eprintln!(
                    "step {:>6}: mean loss {mean} ({active:.1}% of pairs/triplets active)  val AUC {:.4}  EER {:.2}%  {}-way one-shot {:.1}%",
                    line.step,
                    v.auc,
                    100.0 * v.eer,
                    v.ways,
                    100.0 * v.oneshot_accuracy
                )
            });
        }
        self.bar.set_position(if self.by_time {
            (elapsed * 10.0) as u64
        } else {
            line.step
        });
        self.bar.set_message(format!(
            "step {} loss {loss} {:.0} img/s",
            line.step, line.images_per_sec
        ));
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::loss_text;

    #[test]
    fn small_losses_keep_their_digits() {
        assert_eq!(loss_text(0.00001234), "1.234e-5");
        assert_eq!(loss_text(0.0), "0.0000");
        assert_eq!(loss_text(0.5), "0.5000");
    }
}
