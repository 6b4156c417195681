//! The `siamese` command: a thin layer that parses arguments, calls the library crates and
//! prints. Diagnostics and progress go to stderr; `--json` results go to stdout.
//!
//! Exit status: 0 success, 1 failure (the cause chain is printed), 2 bad usage.

mod args;
mod commands;
mod face_args;
mod faces;
mod finetune;
mod guard;
mod progress;
mod values;

use clap::Parser;

// Training allocates and frees the same large activation buffers every step. glibc's malloc
// hands buffers this large back to the kernel on every free, so each step paid for page faults,
// zeroing and cross-thread TLB shootdowns (measured: a third of the wall time, with the second
// core idle). mimalloc keeps them for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's option `purge_delay` (number 15 in both its v2 and v3 `mi_option_t`; the
// `mimalloc` crate does not name it): milliseconds before freed memory goes back to the
// kernel, 1000 by default in v3. A training step frees its activations and allocates them
// again about a step later, so whenever steps took longer than that (koch and resnet always;
// conv4 on a busy machine) every step faulted them back in as fresh 2 MiB pages the kernel had
// to zero (measured on the Omniglot recipe with the other core busy: 4.3 s of system time in
// 35 s, against 1.2 s without purging, 8% of the wall time). A `siamese` process is short-lived
// and its peak is what it holds anyway, so it never purges.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How many times candle's pool workers spin waiting for work before they sleep.
const CANDLE_SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

fn main() {
    // SAFETY: mimalloc's documented option setter, with an option it defines; the allocator
    // reads options at any time, before or after the first allocation.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle runs its element-wise ops on a pool of its own threads, beside rayon's that run
    // the convolutions; after each op its workers spin 25,000 times before they sleep, taking
    // a core from the convolution that follows (2 cores here). A short spin measured 3% less
    // CPU time for `embed` and 6% for a resnet training run (alternating runs). Read once,
    // when candle first builds the pool; a value the user set wins.
    if std::env::var_os(CANDLE_SPIN).is_none() {
        std::env::set_var(CANDLE_SPIN, "200");
    }
    // `siamese inspect model | head` closes stdout early: end quietly, as Unix tools do,
    // instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are successes; everything else is bad usage (exit 2).
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            std::process::exit(2);
        }
        // candle's kernels and ours read the thread count from RAYON_NUM_THREADS.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    match commands::run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            let code = if e.downcast_ref::<commands::UsageError>().is_some() {
                2
            } else {
                1
            };
            std::process::exit(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: its default in mimalloc v3 is 1000 (ms), and setting it
    /// reads back.
    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // SAFETY: as in `main`.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            }
            mi_option_set(MI_OPTION_PURGE_DELAY, -1);
            assert_eq!(mi_option_get(MI_OPTION_PURGE_DELAY), -1);
        }
    }
}
