//! The backup manifest: every file with its chunks and checksums, WAL range, times, sizes.
//! Stored as JSON followed by a `sha256:<hex>` trailer line, written last.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{BackupError, Result};

/// Key prefix of base backups.
pub const BACKUPS: &str = "backups/";

/// Everything needed to restore and verify one base backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this manifest.
    pub version: u32,
    /// Backup id (`20261130T021500Z`), also its key prefix.
    pub id: String,
    /// Node the backup was taken from.
    pub node: String,
    pub pg_version: String,
    pub system_identifier: String,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    /// First WAL segment restore needs.
    pub start_wal: String,
    /// Last WAL segment needed to reach consistency.
    pub stop_wal: String,
    pub wal_segment_size: u64,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub finished_at: String,
    pub from_standby: bool,
    /// `full`, `diff` (chunks unchanged since the newest full backup are referenced) or `incr`
    /// (unchanged since the newest backup of any type). Manifests before incrementals: full.
    #[serde(default = "full")]
    pub kind: String,
    /// The backup this one was compared with (diff, incr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub compression: String,
    pub encrypted: bool,
    /// Bytes read from the data dir.
    pub size: u64,
    /// Bytes stored in the repository (pack objects).
    pub stored_size: u64,
    /// backup_label as returned by pg_backup_stop.
    pub backup_label: String,
    /// tablespace_map as returned by pg_backup_stop (empty when no tablespaces).
    pub tablespace_map: String,
    /// Directories relative to the data dir, parents first.
    pub dirs: Vec<String>,
    pub files: Vec<FileEntry>,
    pub packs: Vec<PackEntry>,
}

/// One regular file of the data dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

fn full() -> String {
    "full".into()
}

/// A piece of a file: one zstd frame inside a pack object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The backup whose pack holds the frame, when not this one (diff, incr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    pub pack: u32,
    /// Offset and length of the compressed frame in the pack.
    pub pack_offset: u64,
    pub stored_len: u64,
    /// Where the chunk goes in the file and its uncompressed length.
    pub file_offset: u64,
    pub len: u64,
    /// sha256 of the uncompressed bytes, hex.
    pub sha256: String,
}

/// One pack object with the checksum of its stored bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: u32,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn key(id: &str) -> String {
        format!("{BACKUPS}{id}/manifest.json")
    }

    pub fn pack_key(id: &str, pack: u32) -> String {
        format!("{BACKUPS}{id}/pack-{pack:05}")
    }

    /// The backup holding chunk `c` of this backup.
    pub fn owner<'a>(&'a self, c: &'a ChunkRef) -> &'a str {
        c.backup.as_deref().unwrap_or(&self.id)
    }

    /// Other backups whose packs this one's chunks are in, sorted.
    pub fn depends_on(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .files
            .iter()
            .flat_map(|f| f.chunks.iter())
            .filter_map(|c| c.backup.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Some(r) = &self.reference {
            if !v.contains(r) {
                v.push(r.clone());
                v.sort();
            }
        }
        v
    }

    /// Bytes of the data dir stored in this backup's own packs (the rest is referenced).
    pub fn own_size(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter())
            .filter(|c| c.backup.is_none())
            .map(|c| c.len)
            .sum()
    }

    /// JSON plus checksum trailer.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut body = serde_json::to_vec_pretty(self).map_err(|e| BackupError::Corrupt {
            key: Self::key(&self.id),
            detail: format!("cannot serialize manifest: {e}"),
        })?;
        let sum = hex(&Sha256::digest(&body));
        body.extend_from_slice(format!("\nsha256:{sum}\n").as_bytes());
        Ok(body)
    }

    /// Parses and checks the trailer; `key` names the object in errors.
    pub fn decode(key: &str, data: &[u8]) -> Result<Manifest> {
        let corrupt = |detail: String| BackupError::Corrupt {
            key: key.to_owned(),
            detail,
        };
        let text = std::str::from_utf8(data).map_err(|_| corrupt("not UTF-8".into()))?;
        let trimmed = text.trim_end_matches('\n');
        let (body, trailer) = trimmed
            .rsplit_once('\n')
            .ok_or_else(|| corrupt("no checksum trailer".into()))?;
        let want = trailer
            .strip_prefix("sha256:")
            .ok_or_else(|| corrupt("no checksum trailer".into()))?;
        let got = hex(&Sha256::digest(body.as_bytes()));
        if got != want {
            return Err(corrupt(format!(
                "checksum mismatch (recorded {want}, computed {got})"
            )));
        }
        let m: Manifest =
            serde_json::from_str(body).map_err(|e| corrupt(format!("bad JSON: {e}")))?;
        m.validate(key)?;
        Ok(m)
    }

    /// Refuses a manifest that would make restore write outside its directory: every path
    /// must be relative and made of plain names (no `..`, `.`, empty or absolute parts).
    pub fn validate(&self, key: &str) -> Result<()> {
        let unsafe_ = |detail: String| BackupError::UnsafeManifest {
            key: key.to_owned(),
            detail,
        };
        if self.id.is_empty() || self.id.contains(['/', '\\']) || self.id.starts_with('.') {
            return Err(unsafe_(format!(
                "backup id `{}` is not a plain name",
                self.id
            )));
        }
        if key.starts_with(BACKUPS) && Self::key(&self.id) != key {
            return Err(unsafe_(format!(
                "it names backup `{}`, which is not the backup it is stored under",
                self.id
            )));
        }
        for c in self.files.iter().flat_map(|f| f.chunks.iter()) {
            if let Some(b) = &c.backup {
                if b.is_empty() || b.contains(['/', '\\']) || b.starts_with('.') {
                    return Err(unsafe_(format!("chunk owner `{b}` is not a backup id")));
                }
            }
        }
        let paths = self
            .dirs
            .iter()
            .map(|d| ("directory", d))
            .chain(self.files.iter().map(|f| ("file", &f.path)));
        for (what, p) in paths {
            let bad = p.is_empty()
                || p.starts_with('/')
                || p.contains('\0')
                || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
            if bad {
                return Err(unsafe_(format!(
                    "{what} path `{}` is not a relative path of plain names (absolute, `..`, `.` or empty parts): a forged repository could write outside the restore directory",
                    p.escape_debug()
                )));
            }
        }
        Ok(())
    }

    /// WAL segments restore needs to reach consistency, `start_wal..=stop_wal`.
    pub fn needed_wal(&self) -> Vec<String> {
        wal_range(&self.start_wal, &self.stop_wal, self.wal_segment_size)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Segment file names from `first` to `last` (inclusive) on `first`'s timeline.
pub fn wal_range(first: &str, last: &str, seg_size: u64) -> Vec<String> {
    let (Some((tl, a)), Some((_, b))) = (
        parse_segment(first, seg_size),
        parse_segment(last, seg_size),
    ) else {
        return vec![first.to_owned(), last.to_owned()];
    };
    (a..=b).map(|n| segment_name(tl, n, seg_size)).collect()
}

/// (timeline, segment number) of a WAL segment file name.
pub fn parse_segment(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() < 24 || !name[..24].chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let tl = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_log = 0x1_0000_0000 / seg_size.max(1);
    Some((tl, log * per_log + seg))
}

/// The file name of segment `segno` on timeline `tl`.
pub fn segment_name(tl: u32, segno: u64, seg_size: u64) -> String {
    let per_log = 0x1_0000_0000 / seg_size.max(1);
    format!("{tl:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
}

/// A backup id from a time: `20261130T021500Z`.
pub fn backup_id(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        let seg = 16 << 20;
        assert_eq!(
            parse_segment("000000010000000100000002", seg),
            Some((1, 258))
        );
        assert_eq!(segment_name(1, 258, seg), "000000010000000100000002");
        assert_eq!(
            wal_range("0000000100000000000000FE", "000000010000000100000000", seg),
            vec![
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000"
            ]
        );
    }

    pub(crate) fn minimal(id: &str) -> Manifest {
        Manifest {
            version: 1,
            id: id.into(),
            node: "n".into(),
            pg_version: "15".into(),
            system_identifier: "1".into(),
            timeline: 1,
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            start_wal: "000000010000000000000002".into(),
            stop_wal: "000000010000000000000002".into(),
            wal_segment_size: 16 << 20,
            started_at: String::new(),
            finished_at: String::new(),
            from_standby: false,
            kind: "full".into(),
            reference: None,
            compression: "zstd:3".into(),
            encrypted: false,
            size: 0,
            stored_size: 0,
            backup_label: String::new(),
            tablespace_map: String::new(),
            dirs: vec!["base".into(), "base/1".into()],
            files: vec![FileEntry {
                path: "base/1/1259".into(),
                size: 0,
                chunks: vec![],
            }],
            packs: vec![],
        }
    }

    #[test]
    fn forged_paths_are_refused_by_name() {
        let key = Manifest::key("b1");
        let ok = minimal("b1");
        assert_eq!(Manifest::decode(&key, &ok.encode().unwrap()).unwrap(), ok);
        for bad in [
            "../../etc/cron.d/x",
            "/etc/passwd",
            "base/./1",
            "base//1",
            "",
            "a/..",
        ] {
            let mut m = minimal("b1");
            m.files[0].path = bad.into();
            let e = Manifest::decode(&key, &m.encode().unwrap()).unwrap_err();
            assert!(
                matches!(e, BackupError::UnsafeManifest { .. })
                    && e.to_string().contains(&format!("`{bad}`")),
                "{bad}: {e}"
            );
            let mut m = minimal("b1");
            m.dirs.push(bad.into());
            assert!(
                Manifest::decode(&key, &m.encode().unwrap()).is_err(),
                "dir {bad}"
            );
        }
        let e = Manifest::decode(&key, &minimal("b2").encode().unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("not the backup it is stored under"),
            "{e}"
        );
    }

    #[test]
    fn id_is_sortable_compact_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(backup_id(t), "20270115T080000Z");
    }
}
