//! The WAL archive as a whole: what its objects are (segments, history, backup history and
//! partial files), which timelines it holds and how they branch, and whether every kept
//! backup can replay from its start to the archive's end without a gap.
//!
//! The continuity rule follows PostgreSQL's recovery (`XLogFileReadAnyTLI` with
//! `recovery_target_timeline = 'latest'`): from a backup on timeline T, recovery follows the
//! newest timeline whose history contains T. On each timeline of that path it reads segments
//! up to the one before the switch point's segment; the switch segment and the rest come from
//! the child timeline. The segment list of the last timeline ends the archive.

use std::collections::{BTreeMap, BTreeSet};

use crate::manifest::{parse_segment, segment_name, Manifest};
use crate::storage::ObjectInfo;
use crate::wal::WAL;

/// What one object under `wal/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    Segment {
        tli: u32,
        segno: u64,
    },
    /// `<tli>.history`.
    History {
        tli: u32,
    },
    /// `<segment>.<offset>.backup`, `<segment>.partial` and anything else the server archives.
    Other,
}

/// Classifies WAL file `name`.
pub fn classify(name: &str, seg_size: u64) -> WalKind {
    if name.len() == 24 {
        if let Some((tli, segno)) = parse_segment(name, seg_size) {
            return WalKind::Segment { tli, segno };
        }
    }
    if let Some(t) = name.strip_suffix(".history") {
        if t.len() == 8 {
            if let Ok(tli) = u32::from_str_radix(t, 16) {
                return WalKind::History { tli };
            }
        }
    }
    WalKind::Other
}

/// One entry of a timeline history file: `parent` ended at `switch_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: u32,
    pub switch_lsn: u64,
}

/// Parses a `.history` file (`<parent tli>\t<switch LSN>\t<reason>` per line; `#` comments).
pub fn parse_history(text: &str) -> std::result::Result<Vec<HistoryEntry>, String> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            return Err(format!(
                "line {}: expected `<timeline> <LSN> <reason>`",
                i + 1
            ));
        };
        let parent: u32 = tli
            .parse()
            .map_err(|_| format!("line {}: `{tli}` is not a timeline", i + 1))?;
        let lsn: pgha_postgres::Lsn = lsn
            .parse()
            .map_err(|_| format!("line {}: `{lsn}` is not an LSN", i + 1))?;
        if out.last().is_some_and(|p| p.parent >= parent) {
            return Err(format!("line {}: timelines are not increasing", i + 1));
        }
        out.push(HistoryEntry {
            parent,
            switch_lsn: lsn.0,
        });
    }
    Ok(out)
}

/// The archive's segments by timeline and its parsed history files.
#[derive(Debug, Clone, Default)]
pub struct ArchiveIndex {
    pub seg_size: u64,
    pub segments: BTreeMap<u32, BTreeSet<u64>>,
    /// Parsed history of each timeline whose history file is archived (and readable).
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
    /// Timelines whose history file is archived, readable or not.
    pub history_files: BTreeSet<u32>,
}

impl ArchiveIndex {
    /// Indexes a listing of `wal/` (histories are added with [`ArchiveIndex::add_history`]).
    pub fn from_listing(objects: &[ObjectInfo], seg_size: u64) -> Self {
        let mut ix = ArchiveIndex {
            seg_size,
            ..Default::default()
        };
        for o in objects {
            let name = o.key.rsplit('/').next().unwrap_or("");
            match classify(name, seg_size) {
                WalKind::Segment { tli, segno } => {
                    ix.segments.entry(tli).or_default().insert(segno);
                }
                WalKind::History { tli } => {
                    ix.history_files.insert(tli);
                }
                WalKind::Other => {}
            }
        }
        ix
    }

    pub fn add_history(&mut self, tli: u32, entries: Vec<HistoryEntry>) {
        self.history_files.insert(tli);
        self.histories.insert(tli, entries);
    }

    /// Every timeline the archive knows of.
    pub fn timelines(&self) -> BTreeSet<u32> {
        let mut t: BTreeSet<u32> = self.segments.keys().copied().collect();
        t.extend(self.history_files.iter().copied());
        t
    }

    /// The timeline recovery from `tli` ends on: the newest whose history contains `tli`.
    pub fn latest_from(&self, tli: u32) -> u32 {
        self.timelines()
            .into_iter()
            .rev()
            .find(|&t| {
                t == tli
                    || self
                        .histories
                        .get(&t)
                        .is_some_and(|h| h.iter().any(|e| e.parent == tli))
            })
            .unwrap_or(tli)
    }

    /// The last segment of the archive's newest timeline (its end), if any.
    pub fn end(&self) -> Option<String> {
        let (tli, segs) = self.segments.iter().next_back()?;
        segs.iter()
            .next_back()
            .map(|&s| segment_name(*tli, s, self.seg_size))
    }

    /// Problems that stop recovery from `tli`/`start` (a segment number) reaching the end of
    /// the archive, and at least segment `through` (a backup's stop segment, needed for
    /// consistency): missing segments, as ranges.
    pub fn gaps_from(&self, tli: u32, start: u64, through: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let last = self.latest_from(tli);
        // The path of (timeline, first segment, last segment or None = open) from tli to last.
        let mut path: Vec<(u32, u64, Option<u64>)> = Vec::new();
        if last == tli {
            path.push((tli, start, None));
        } else {
            let Some(h) = self.histories.get(&last) else {
                return vec![format!(
                    "timeline {last}: history file {last:08X}.history is missing or unreadable"
                )];
            };
            let from = h.iter().position(|e| e.parent == tli).unwrap_or(0);
            let mut begin = start;
            for e in &h[from..] {
                let switch_seg = e.switch_lsn / self.seg_size.max(1);
                path.push((e.parent, begin, switch_seg.checked_sub(1)));
                begin = begin.max(switch_seg);
            }
            path.push((last, begin, None));
        }
        for (t, first, end) in path {
            let have = self.segments.get(&t);
            let end = match end {
                Some(e) => e,
                // The open timeline ends at its newest archived segment.
                None => {
                    let newest = have.and_then(|s| s.iter().next_back().copied());
                    let need = (t == tli).then_some(through);
                    match newest.max(need) {
                        Some(e) => e,
                        None => continue,
                    }
                }
            };
            if end < first {
                continue;
            }
            let mut missing_from: Option<u64> = None;
            for n in first..=end + 1 {
                let present = n > end || have.is_some_and(|s| s.contains(&n));
                match (present, missing_from) {
                    (false, None) => missing_from = Some(n),
                    (true, Some(a)) => {
                        let name = |x| segment_name(t, x, self.seg_size);
                        problems.push(if a == n - 1 {
                            format!("timeline {t}: segment {} is missing", name(a))
                        } else {
                            format!(
                                "timeline {t}: segments {} .. {} are missing ({} segments)",
                                name(a),
                                name(n - 1),
                                n - a
                            )
                        });
                        missing_from = None;
                    }
                    _ => {}
                }
            }
        }
        problems
    }

    /// Timelines above 1 with archived WAL but no history file: the promotion that created
    /// them archives it first, so the archive lost an object.
    pub fn missing_histories(&self) -> Vec<String> {
        self.segments
            .keys()
            .filter(|&&t| t > 1 && !self.history_files.contains(&t))
            .map(|t| {
                format!("timeline {t}: WAL is archived but its history file {t:08X}.history is not")
            })
            .collect()
    }

    /// Gaps between backup `m`'s start and the archive's end, each naming the backup.
    pub fn gaps_for(&self, m: &Manifest) -> Vec<String> {
        let (Some((tli, start)), Some((_, stop))) = (
            parse_segment(&m.start_wal, m.wal_segment_size),
            parse_segment(&m.stop_wal, m.wal_segment_size),
        ) else {
            return vec![format!(
                "backup {}: WAL range `{}` .. `{}` is not made of segment names",
                m.id, m.start_wal, m.stop_wal
            )];
        };
        self.gaps_from(tli, start, stop)
            .into_iter()
            .map(|p| format!("backup {} cannot replay to the archive's end: {p}", m.id))
            .collect()
    }
}

/// Keys under `wal/` of one listing that are history files, with their timelines.
pub fn history_keys(objects: &[ObjectInfo], seg_size: u64) -> Vec<(u32, String)> {
    objects
        .iter()
        .filter_map(|o| {
            let name = o.key.strip_prefix(WAL)?.rsplit('/').next()?;
            match classify(name, seg_size) {
                WalKind::History { tli } => Some((tli, o.key.clone())),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn listing(names: &[&str]) -> Vec<ObjectInfo> {
        names
            .iter()
            .map(|n| ObjectInfo {
                key: crate::wal::wal_key(n).unwrap(),
                size: 1,
            })
            .collect()
    }

    fn segs(tli: u32, range: std::ops::RangeInclusive<u64>) -> Vec<String> {
        range.map(|n| segment_name(tli, n, SEG)).collect()
    }

    #[test]
    fn names_are_classified() {
        assert_eq!(
            classify("000000020000000100000003", SEG),
            WalKind::Segment {
                tli: 2,
                segno: 256 + 3
            }
        );
        assert_eq!(
            classify("0000000A.history", SEG),
            WalKind::History { tli: 10 }
        );
        assert_eq!(
            classify("000000010000000000000003.00000028.backup", SEG),
            WalKind::Other
        );
        assert_eq!(
            classify("000000010000000000000003.partial", SEG),
            WalKind::Other
        );
    }

    #[test]
    fn history_files_parse_and_bad_ones_are_named() {
        let h = parse_history(
            "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tat restore point\n",
        )
        .unwrap();
        assert_eq!(
            h,
            vec![
                HistoryEntry {
                    parent: 1,
                    switch_lsn: 0x3000148
                },
                HistoryEntry {
                    parent: 2,
                    switch_lsn: 0x5000000
                }
            ]
        );
        assert!(parse_history("1 zz x")
            .unwrap_err()
            .contains("`zz` is not an LSN"));
        assert!(parse_history("2 0/1 a\n1 0/2 b")
            .unwrap_err()
            .contains("not increasing"));
    }

    #[test]
    fn a_contiguous_single_timeline_has_no_gap_and_a_hole_is_named_as_a_range() {
        let names = segs(1, 3..=9);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ix = ArchiveIndex::from_listing(&listing(&refs), SEG);
        assert!(ix.gaps_from(1, 3, 3).is_empty());
        assert_eq!(ix.end().as_deref(), Some("000000010000000000000009"));
        // Before the backup's start nothing is needed.
        assert!(ix.gaps_from(1, 5, 5).is_empty());
        // A backup whose own WAL was never archived (here: its stop segment 11).
        assert_eq!(
            ix.gaps_from(1, 9, 11),
            vec!["timeline 1: segments 00000001000000000000000A .. 00000001000000000000000B are missing (2 segments)".to_owned()]
        );

        let mut holed = names.clone();
        holed.retain(|n| !n.ends_with('5') && !n.ends_with('6'));
        holed.retain(|n| !n.ends_with('8'));
        let refs: Vec<&str> = holed.iter().map(String::as_str).collect();
        let ix = ArchiveIndex::from_listing(&listing(&refs), SEG);
        assert_eq!(
            ix.gaps_from(1, 3, 3),
            vec![
                "timeline 1: segments 000000010000000000000005 .. 000000010000000000000006 are missing (2 segments)".to_owned(),
                "timeline 1: segment 000000010000000000000008 is missing".to_owned(),
            ]
        );
    }

    #[test]
    fn recovery_follows_the_newest_timeline_through_its_switch_segment() {
        // Timeline 1 to segment 6 (the switch at 0/7000100 is inside segment 7, which comes
        // from timeline 2); timeline 2 from 7 to 9. Timeline 1's own segment 7 (the old
        // primary's, archived or not) is not needed.
        let mut names = segs(1, 3..=6);
        names.extend(segs(2, 7..=9));
        names.push("00000002.history".into());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut ix = ArchiveIndex::from_listing(&listing(&refs), SEG);
        ix.add_history(2, parse_history("1\t0/7000100\tx").unwrap());
        assert_eq!(ix.latest_from(1), 2);
        assert_eq!(ix.gaps_from(1, 3, 3), Vec::<String>::new());
        assert_eq!(ix.end().as_deref(), Some("000000020000000000000009"));

        // The switch segment missing on the new timeline is a gap there.
        let mut no_switch = names.clone();
        no_switch.retain(|n| n != "000000020000000000000007");
        let refs: Vec<&str> = no_switch.iter().map(String::as_str).collect();
        let mut ix2 = ArchiveIndex::from_listing(&listing(&refs), SEG);
        ix2.add_history(2, parse_history("1\t0/7000100\tx").unwrap());
        assert_eq!(
            ix2.gaps_from(1, 3, 3),
            vec!["timeline 2: segment 000000020000000000000007 is missing".to_owned()]
        );

        // Without the history file recovery cannot follow timeline 2.
        let mut no_hist = names.clone();
        no_hist.retain(|n| !n.ends_with(".history"));
        let refs: Vec<&str> = no_hist.iter().map(String::as_str).collect();
        let ix3 = ArchiveIndex::from_listing(&listing(&refs), SEG);
        assert!(ix3.gaps_from(2, 7, 7).is_empty());
        assert_eq!(
            ix3.missing_histories(),
            vec!["timeline 2: WAL is archived but its history file 00000002.history is not"]
        );
        assert!(ix.missing_histories().is_empty());
    }

    #[test]
    fn a_missing_segment_before_the_switch_on_the_parent_is_a_gap() {
        let mut names = segs(1, 3..=6);
        names.retain(|n| !n.ends_with('5'));
        names.extend(segs(2, 7..=8));
        names.push("00000002.history".into());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut ix = ArchiveIndex::from_listing(&listing(&refs), SEG);
        ix.add_history(2, parse_history("1\t0/7000000\tx").unwrap());
        assert_eq!(
            ix.gaps_from(1, 3, 3),
            vec!["timeline 1: segment 000000010000000000000005 is missing".to_owned()]
        );
    }
}
