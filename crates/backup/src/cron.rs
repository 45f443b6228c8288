//! Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC:
//! `*`, lists, ranges and steps (`*/15`, `1-5`, `0,30`). Day-of-week 0 and 7 are Sunday; when
//! both day fields are restricted, either matching is enough (as in Vixie cron).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{BackupError, Result};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    expr: String,
    minutes: u64,
    hours: u32,
    dom: u32,
    months: u16,
    dow: u8,
    dom_any: bool,
    dow_any: bool,
}

fn field(expr: &str, f: &str, lo: u32, hi: u32) -> Result<(u64, bool)> {
    let bad = |detail: String| BackupError::Cron {
        expr: expr.to_owned(),
        detail,
    };
    let mut bits = 0u64;
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("bad step in `{part}`")))?,
            ),
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let p = |v: &str| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| bad(format!("`{v}` is not in {lo}..={hi}")))
            };
            (p(a)?, p(b)?)
        };
        if a > b {
            return Err(bad(format!("range `{range}` is backwards")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, f == "*"))
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(BackupError::Cron {
                expr: expr.to_owned(),
                detail: format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                    f.len()
                ),
            });
        }
        let (minutes, _) = field(expr, f[0], 0, 59)?;
        let (hours, _) = field(expr, f[1], 0, 23)?;
        let (dom, dom_any) = field(expr, f[2], 1, 31)?;
        let (months, _) = field(expr, f[3], 1, 12)?;
        let (mut dow, dow_any) = field(expr, f[4], 0, 7)?;
        if dow & (1 << 7) != 0 {
            dow |= 1;
        }
        Ok(Cron {
            expr: expr.to_owned(),
            minutes,
            hours: hours as u32,
            dom: dom as u32,
            months: months as u16,
            dow: (dow & 0x7f) as u8,
            dom_any,
            dow_any,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first matching minute strictly after `after`.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        let secs = after.duration_since(UNIX_EPOCH).ok()?.as_secs();
        let start_min = secs / 60 + 1;
        let first_day = (start_min / 1440) as i64;
        let mut first_minute_of_day = (start_min % 1440) as u32;
        for day in first_day..first_day + 366 * 8 {
            let (_, m, d) = civil_from_days(day);
            let wd = ((day + 4).rem_euclid(7)) as u32; // 1970-01-01 was a Thursday
            let dom_ok = self.dom & (1 << d) != 0;
            let dow_ok = self.dow & (1 << wd) != 0;
            let day_ok = match (self.dom_any, self.dow_any) {
                (true, true) => true,
                (false, true) => dom_ok,
                (true, false) => dow_ok,
                (false, false) => dom_ok || dow_ok,
            };
            if self.months & (1 << m) != 0 && day_ok {
                for minute in first_minute_of_day..1440 {
                    let (h, mi) = (minute / 60, minute % 60);
                    if self.hours & (1 << h) != 0 && self.minutes & (1 << mi) != 0 {
                        let t = day as u64 * 86400 + u64::from(minute) * 60;
                        return Some(UNIX_EPOCH + Duration::from_secs(t));
                    }
                }
            }
            first_minute_of_day = 0;
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn daily_at_two() {
        let c = Cron::parse("0 2 * * *").unwrap();
        assert_eq!(
            c.next_after(at("2026-11-30T01:15:00Z")),
            Some(at("2026-11-30T02:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-11-30T02:00:00Z")),
            Some(at("2026-12-01T02:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-12-31T03:00:00Z")),
            Some(at("2027-01-01T02:00:00Z"))
        );
    }

    #[test]
    fn steps_ranges_weekdays() {
        let c = Cron::parse("*/15 9-17 * * 1-5").unwrap();
        // 2026-11-28 is a Saturday.
        assert_eq!(
            c.next_after(at("2026-11-28T10:00:00Z")),
            Some(at("2026-11-30T09:00:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-11-30T09:00:00Z")),
            Some(at("2026-11-30T09:15:00Z"))
        );
        let sunday = Cron::parse("30 4 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(at("2026-11-30T00:00:00Z")),
            Some(at("2026-12-06T04:30:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        let e = Cron::parse("0 25 * * *").unwrap_err().to_string();
        assert!(e.contains("`25` is not in 0..=23"), "{e}");
        let e = Cron::parse("0 2 * *").unwrap_err().to_string();
        assert!(e.contains("expected 5 fields"), "{e}");
    }
}
