//! postgres_exporter's `runonserver`: a semver range over the server's version, in the syntax
//! of the `blang/semver` library it uses: comparators `>=9.6.0 <11.0.0` (all must hold),
//! alternatives joined by `||`, operators `=`, `==`, `!`, `!=`, `>`, `>=`, `<`, `<=` (none means
//! `=`), wildcards `10.x` / `9.6.x`. Missing parts count as 0 (`<10` is `<10.0.0`).

use std::fmt;

/// major.minor.patch
type Version = (u64, u64, u64);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// One comparator; its version is the half-open interval `[lo, hi)` (one version, or all the
/// versions a wildcard covers).
#[derive(Debug, Clone, PartialEq)]
struct Comparator {
    op: Op,
    lo: Version,
    hi: Version,
}

impl Comparator {
    fn holds(&self, v: Version) -> bool {
        let inside = self.lo <= v && v < self.hi;
        match self.op {
            Op::Eq => inside,
            Op::Ne => !inside,
            Op::Gt => v >= self.hi,
            Op::Ge => v >= self.lo,
            Op::Lt => v < self.lo,
            Op::Le => v < self.hi,
        }
    }
}

/// A parsed `runonserver` value.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRange {
    text: String,
    /// Alternatives (`||`), each a conjunction of comparators.
    any: Vec<Vec<Comparator>>,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl VersionRange {
    /// Parses a range; the error says which part is wrong and what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut any = Vec::new();
        for alt in text.split("||") {
            let mut all = Vec::new();
            let mut pending_op: Option<&str> = None;
            for part in alt.split_whitespace() {
                let (op, ver) = split_op(part);
                // `>= 9.6.0`: an operator on its own applies to the next part.
                if ver.is_empty() {
                    if pending_op.is_some() || op.is_empty() {
                        return Err(format!("`{part}`: expected a version after the operator"));
                    }
                    pending_op = Some(op);
                    continue;
                }
                let op = match pending_op.take() {
                    Some(p) if op.is_empty() => p,
                    Some(p) => return Err(format!("`{p} {part}`: two operators")),
                    None => op,
                };
                all.push(comparator(op, ver).map_err(|e| format!("`{part}`: {e}"))?);
            }
            if let Some(op) = pending_op {
                return Err(format!("`{op}`: expected a version after the operator"));
            }
            if all.is_empty() {
                return Err(format!(
                    "`{}`: empty range (expected e.g. \">=10.0.0\" or \">=9.6.0 <11.0.0 || >=13.0.0\")",
                    text.trim()
                ));
            }
            any.push(all);
        }
        Ok(Self {
            text: text.trim().to_owned(),
            any,
        })
    }

    /// Whether PostgreSQL's `server_version_num` falls in the range (as postgres_exporter's
    /// semver form: `150018` is 15.18.0, `90624` is 9.6.24).
    pub fn matches_version_num(&self, num: i32) -> bool {
        let num = u64::try_from(num).unwrap_or(0);
        let v = if num >= 100_000 {
            (num / 10_000, num % 10_000, 0)
        } else {
            (num / 10_000, (num / 100) % 100, num % 100)
        };
        self.any.iter().any(|all| all.iter().all(|c| c.holds(v)))
    }
}

fn split_op(part: &str) -> (&str, &str) {
    let end = part
        .find(|c: char| !matches!(c, '<' | '>' | '=' | '!'))
        .unwrap_or(part.len());
    part.split_at(end)
}

fn comparator(op: &str, ver: &str) -> Result<Comparator, String> {
    let op = match op {
        "" | "=" | "==" => Op::Eq,
        "!" | "!=" => Op::Ne,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "<" => Op::Lt,
        "<=" => Op::Le,
        other => {
            return Err(format!(
                "unknown operator `{other}` (expected =, !=, >, >=, <, <=)"
            ))
        }
    };
    let fields: Vec<&str> = ver.split('.').collect();
    if fields.len() > 3 {
        return Err("expected at most major.minor.patch".into());
    }
    let mut nums = [0u64; 3];
    // Index of the first wildcard (or missing part after an explicit wildcard), if any.
    let mut wild = None;
    for (i, f) in fields.iter().enumerate() {
        if matches!(*f, "x" | "X" | "*") {
            wild.get_or_insert(i);
            continue;
        }
        if wild.is_some() {
            return Err("a number after a wildcard".into());
        }
        nums[i] = f
            .parse()
            .map_err(|_| format!("`{f}` is not a number or a wildcard (x)"))?;
    }
    let lo = (nums[0], nums[1], nums[2]);
    let hi = match wild {
        Some(0) => return Err("the major version cannot be a wildcard".into()),
        Some(1) => (nums[0] + 1, 0, 0),
        Some(_) => (nums[0], nums[1] + 1, 0),
        None => (nums[0], nums[1], nums[2] + 1),
    };
    Ok(Comparator { op, lo, hi })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(range: &str, num: i32) -> bool {
        VersionRange::parse(range).unwrap().matches_version_num(num)
    }

    #[test]
    fn comparators_conjunctions_and_alternatives() {
        assert!(m(">=10.0.0", 150018));
        assert!(!m(">=10.0.0", 90624));
        assert!(m(">=9.6.0 <11.0.0", 90624));
        assert!(!m(">=9.6.0 <11.0.0", 150004));
        assert!(m("<10.0.0 || >=15.0.0", 150004));
        assert!(!m("<10.0.0 || >=16.0.0", 150004));
        assert!(m(">= 9.6.0", 90624), "operator apart from its version");
        assert!(m("<10", 90624) && !m("<10", 100000), "missing parts are 0");
        assert!(m("15.4.0", 150004) && m("=15.4.0", 150004) && m("==15.4.0", 150004));
        assert!(!m("!15.4.0", 150004) && m("!=15.4.0", 150005));
        assert!(m(">9.6.24", 100000) && !m(">9.6.24", 90624));
        assert!(m("<=9.6.24", 90624) && !m("<=9.6.24", 100000));
    }

    #[test]
    fn wildcards_cover_their_versions() {
        assert!(m("15.x", 150018) && !m("15.x", 160000) && !m("15.x", 140010));
        assert!(m("9.6.x", 90624) && !m("9.6.x", 90500));
        assert!(m(">15.x", 160000) && !m(">15.x", 150018));
        assert!(m("<=15.x", 150018) && !m("<=15.x", 160000));
        assert!(m("<15.x", 140000) && !m("<15.x", 150000));
        assert!(m("!=15.x", 160000) && !m("!=15.x", 150002));
    }

    #[test]
    fn bad_ranges_say_what_was_expected() {
        for (bad, needle) in [
            ("", "empty range"),
            (">=", "expected a version"),
            (">= >= 10", "expected a version"),
            ("~10.0.0", "not a number"),
            ("=>10", "unknown operator `=>`"),
            ("10.x.3", "after a wildcard"),
            ("x", "major version"),
            ("1.2.3.4", "at most"),
            (">=10 ||", "empty range"),
        ] {
            let e = VersionRange::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }
}
