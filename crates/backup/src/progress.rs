//! A one-line progress display on stderr when it is a terminal (bytes done, percent, MB/s).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running progress line; `finish` clears it.
#[derive(Debug)]
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing when `enabled` and stderr is a terminal; counts bytes of `total` either way.
    pub fn start(enabled: bool, what: &'static str, total: u64) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = (enabled && std::io::stderr().is_terminal()).then(|| {
            let done = done.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let d = done.load(Ordering::Relaxed);
                    let mb = d as f64 / 1e6;
                    let pct = if total > 0 {
                        d as f64 * 100.0 / total as f64
                    } else {
                        100.0
                    };
                    let rate = mb / t.elapsed().as_secs_f64().max(0.001);
                    eprint!(
                        "\r{what}: {mb:>8.1} / {:.1} MB ({pct:>5.1}%) {rate:>7.1} MB/s ",
                        total as f64 / 1e6
                    );
                    let _ = std::io::stderr().flush();
                    std::thread::sleep(Duration::from_millis(200));
                }
                eprint!("\r{:70}\r", "");
            })
        });
        Progress { done, stop, thread }
    }

    /// The counter workers add their bytes to.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
