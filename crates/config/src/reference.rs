//! The configuration reference (docs/CONFIG.md), generated from this crate's own source: every
//! section and key of `pgha.toml` with its type and the doc comment on the field. A test fails
//! when the checked-in file differs, so the reference cannot drift from the types.

use std::collections::BTreeMap;
use std::fmt::Write;

/// The model's source files, read at compile time.
const SOURCES: &[&str] = &[
    include_str!("model.rs"),
    include_str!("backup.rs"),
    include_str!("router.rs"),
    include_str!("tls.rs"),
    include_str!("standby.rs"),
    include_str!("bootstrap.rs"),
];

/// One struct: its doc and its fields (name, type, doc).
#[derive(Debug, Default)]
struct Item {
    doc: String,
    fields: Vec<(String, String, String)>,
    /// For enums: the variants as written in TOML.
    variants: Vec<String>,
}

/// The markdown reference.
pub fn markdown() -> String {
    let items = parse();
    let mut out = String::from(
        "# pgha.toml reference\n\n\
         Generated from the config types in `crates/config` (doc comments included); a test fails when\n\
         this file is stale. Regenerate with\n\
         `PGHA_UPDATE_DOCS=1 cargo test -p pgha-config --test config_reference`.\n\n\
         Every key can also be set from the environment as `PGHA_<SECTION>__<KEY>` (e.g.\n\
         `PGHA_FAILOVER__TTL=10s`), which wins over the file. Secrets are written as\n\
         `{ env = \"VAR\" }` or `{ file = \"/path\" }` (a file must not be readable by group or\n\
         others). Durations are written like `500ms`, `8s`, `1h`; sizes like `16MB`.\n",
    );
    section(&items, "PghaConfig", "", false, &mut out);
    out
}

fn section(items: &BTreeMap<String, Item>, ty: &str, path: &str, array: bool, out: &mut String) {
    let Some(item) = items.get(ty) else { return };
    if !path.is_empty() {
        let head = if array {
            format!("[[{path}]]")
        } else {
            format!("[{path}]")
        };
        let _ = writeln!(out, "\n## `{head}`\n");
        if !item.doc.is_empty() {
            let _ = writeln!(out, "{}\n", item.doc);
        }
    }
    let mut nested = Vec::new();
    let leaf: Vec<_> = item
        .fields
        .iter()
        .filter(|(name, t, _)| {
            let inner = inner_type(t);
            if items.get(inner).is_some_and(|i| i.variants.is_empty()) {
                nested.push((name.clone(), inner.to_owned(), t.starts_with("Vec<")));
                false
            } else {
                true
            }
        })
        .collect();
    if !leaf.is_empty() {
        let _ = writeln!(out, "| key | type | description |\n| --- | --- | --- |");
        for (name, t, doc) in leaf {
            let shown = match items.get(inner_type(t)) {
                Some(e) if !e.variants.is_empty() => e.variants.join(" \\| "),
                _ => t.replace('<', "&lt;").replace('>', "&gt;"),
            };
            let _ = writeln!(out, "| `{name}` | {shown} | {} |", doc.replace('|', "\\|"));
        }
    }
    for (name, inner, is_vec) in nested {
        let p = if path.is_empty() {
            name
        } else {
            format!("{path}.{name}")
        };
        section(items, &inner, &p, is_vec, out);
    }
}

/// `Option<X>` / `Vec<X>` -> `X`.
fn inner_type(t: &str) -> &str {
    let mut t = t.trim();
    for w in ["Option<", "Vec<", "crate::"] {
        if let Some(r) = t.strip_prefix(w) {
            t = r.strip_suffix('>').unwrap_or(r);
        }
    }
    t.strip_prefix("crate::").unwrap_or(t)
}

fn parse() -> BTreeMap<String, Item> {
    let mut items = BTreeMap::new();
    for src in SOURCES {
        let mut doc: Vec<String> = Vec::new();
        let mut current: Option<(String, Item, bool)> = None;
        let mut kebab = false;
        let mut lower = false;
        // A field's `#[serde(rename = "..")]`: its name in pgha.toml.
        let mut rename: Option<String> = None;
        for line in src.lines() {
            let l = line.trim();
            if l.starts_with("#[cfg(test)]") {
                break;
            }
            if let Some(d) = l.strip_prefix("///") {
                doc.push(d.trim().to_owned());
                continue;
            }
            if l.starts_with("#[serde(rename_all") {
                kebab = l.contains("kebab-case");
                lower = l.contains("lowercase");
            } else if let Some(r) = l.strip_prefix("#[serde(rename = \"") {
                rename = r.split('"').next().map(str::to_owned);
            }
            if l.starts_with("#[") || l.is_empty() {
                continue;
            }
            match &mut current {
                None => {
                    for (kw, is_enum) in [("pub struct ", false), ("pub enum ", true)] {
                        if let Some(rest) = l.strip_prefix(kw) {
                            if let Some(name) = rest.strip_suffix(" {") {
                                let item = Item {
                                    doc: doc.join(" "),
                                    ..Item::default()
                                };
                                current = Some((name.to_owned(), item, is_enum));
                            }
                        }
                    }
                    doc.clear();
                }
                Some((name, item, is_enum)) => {
                    if l == "}" {
                        items.insert(std::mem::take(name), std::mem::take(item));
                        current = None;
                        kebab = false;
                        lower = false;
                    } else if *is_enum {
                        let v = l.trim_end_matches(',');
                        if !v.contains(['{', '(', ' ']) && !v.is_empty() {
                            item.variants
                                .push(format!("`{}`", toml_name(v, kebab, lower)));
                        }
                    } else if let Some(rest) = l.strip_prefix("pub ") {
                        if let Some((field, ty)) = rest.split_once(':') {
                            let ty = ty.trim().trim_end_matches(',').to_owned();
                            let field = rename.take().unwrap_or_else(|| field.trim().to_owned());
                            item.fields.push((field, ty, doc.join(" ")));
                        }
                    }
                    doc.clear();
                    rename = None;
                }
            }
        }
    }
    items
}

fn toml_name(variant: &str, kebab: bool, lower: bool) -> String {
    if !(kebab || lower) {
        return variant.to_owned();
    }
    let mut s = String::new();
    for (i, c) in variant.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 && kebab {
                s.push('-');
            }
            s.extend(c.to_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}
