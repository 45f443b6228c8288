//! `pg_settings_*`: every bool/integer/real server setting, units normalised to seconds or
//! bytes exactly as postgres_exporter does (pg_setting.go), so the names match.

/// The metric name suffix and value of one setting, or None when its value cannot be read.
pub fn normalise(name: &str, setting: &str, unit: &str, vartype: &str) -> Option<(String, f64)> {
    let base = name.replace(['.', '-'], "_");
    match vartype {
        "bool" => Some((base, if setting == "on" { 1.0 } else { 0.0 })),
        "integer" | "real" => {
            let mut val: f64 = setting.trim().parse().ok()?;
            let suffix = match unit {
                "" => None,
                "ms" | "s" | "min" | "h" | "d" => Some("seconds"),
                "B" | "kB" | "MB" | "GB" | "TB" | "1kB" | "2kB" | "4kB" | "8kB" | "16kB"
                | "32kB" | "64kB" | "16MB" | "32MB" | "64MB" => Some("bytes"),
                _ => return None,
            };
            if val != -1.0 {
                val *= match unit {
                    "ms" => 1e-3,
                    "min" => 60.0,
                    "h" => 3600.0,
                    "d" => 86400.0,
                    "kB" | "1kB" => 1024.0,
                    "MB" => (1u64 << 20) as f64,
                    "GB" => (1u64 << 30) as f64,
                    "TB" => (1u64 << 40) as f64,
                    "2kB" => 2048.0,
                    "4kB" => 4096.0,
                    "8kB" => 8192.0,
                    "16kB" => 16384.0,
                    "32kB" => 32768.0,
                    "64kB" => 65536.0,
                    "16MB" => (1u64 << 24) as f64,
                    "32MB" => (1u64 << 25) as f64,
                    "64MB" => (1u64 << 26) as f64,
                    _ => 1.0,
                };
            }
            Some(match suffix {
                Some(s) => (format!("{base}_{s}"), val),
                None => (base, val),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn units_follow_postgres_exporter() {
        assert_eq!(
            normalise("shared_buffers", "2048", "8kB", "integer"),
            Some(("shared_buffers_bytes".into(), 16.0 * 1024.0 * 1024.0))
        );
        assert_eq!(
            normalise("max_wal_size", "1024", "MB", "integer"),
            Some(("max_wal_size_bytes".into(), 1024.0 * 1048576.0))
        );
        assert_eq!(
            normalise("statement_timeout", "1500", "ms", "integer"),
            Some(("statement_timeout_seconds".into(), 1.5))
        );
        assert_eq!(
            normalise("temp_file_limit", "-1", "kB", "integer"),
            Some(("temp_file_limit_bytes".into(), -1.0))
        );
        assert_eq!(
            normalise("fsync", "off", "", "bool"),
            Some(("fsync".into(), 0.0))
        );
        assert_eq!(
            normalise("random_page_cost", "4", "", "real"),
            Some(("random_page_cost".into(), 4.0))
        );
    }
}
