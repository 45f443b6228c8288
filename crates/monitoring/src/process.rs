//! `process_*` metrics of this exporter process from /proc/self, named like the Go client's.

use crate::metrics::MetricSet;

/// Reads /proc/self; missing files (non-Linux) just leave metrics out.
pub fn collect(m: &mut MetricSet) {
    let ticks = 100.0; // USER_HZ is 100 on every Linux architecture we build for
    let page = 4096.0; // x86_64/aarch64 base page size; RSS in statm is in pages
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the `(comm)` which may contain spaces.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest[0] is field 3 (state); utime=14, stime=15, starttime=22, vsize=23, rss=24.
            let get = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            if let (Some(u), Some(s)) = (get(14), get(15)) {
                m.counter(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                    &[],
                    (u + s) / ticks,
                );
            }
            if let Some(v) = get(23) {
                m.gauge(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    &[],
                    v,
                );
            }
            if let Some(r) = get(24) {
                m.gauge(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    &[],
                    r * page,
                );
            }
            if let (Some(start), Some(boot)) = (get(22), boot_time()) {
                m.gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    &[],
                    boot + start / ticks,
                );
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        m.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            &[],
            dir.count() as f64,
        );
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(v) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
        {
            m.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                &[],
                v,
            );
        }
        if let Some(v) = limits
            .lines()
            .find(|l| l.starts_with("Max address space"))
            .and_then(|l| l.split_whitespace().nth(3))
        {
            m.gauge(
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                &[],
                v.parse::<f64>().unwrap_or(u64::MAX as f64),
            );
        }
    }
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}
