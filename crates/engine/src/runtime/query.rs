//! Table queries from the web server (`GET /tables/...`), answered on the
//! worker's loop, which owns the tasks' table partitions.
//!
//! A key's partition is the one the default partitioner gives its encoded
//! key (murmur2, as Kafka Streams' `queryMetadataForKey`): where a table
//! keyed like its input keeps it. The loop answers from a task it runs (its
//! store and the changes not yet in it), from a standby replica when the
//! query allows one, and otherwise says which partition to ask for: the web
//! server forwards the query to the worker that owns it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::Result;
use crate::store::Store;
use crate::table::{TableDef, TablePart, WebView};
use crate::web::{Answer, TableRequest};

/// Where a table partition is read from: a task's (store and pending
/// changes) or a standby's store.
pub(crate) enum Source<'a> {
    Task(&'a TablePart),
    Standby(&'a dyn Store),
}

impl Source<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Source::Task(t) => t.get_raw(key),
            Source::Standby(s) => s.get(key),
        }
    }

    /// Up to `limit` entries with `from <= key < to` (`to` `None`: to the
    /// end) in key order, pending changes applied over the store's.
    fn range(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (store, changes): (&dyn Store, Vec<crate::store::Change>) = match self {
            Source::Task(t) => {
                // Later changes replace earlier ones of the same key.
                let latest: BTreeMap<&Vec<u8>, &Option<Vec<u8>>> = t
                    .changes()
                    .filter(|(k, _)| k.as_slice() >= from && to.is_none_or(|to| k.as_slice() < to))
                    .collect();
                let changes = latest
                    .into_iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (&*t.store, changes)
            }
            Source::Standby(s) => (*s, Vec::new()),
        };
        // Deletions among the changes remove at most that many of the
        // store's entries: reading that many more keeps `limit` correct.
        let want = limit.saturating_add(changes.len());
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for entry in store.range(from, to)?.take(want) {
            let (k, v) = entry?;
            merged.insert(k, v);
        }
        // The store's entries not read are past all it gave: at least
        // `limit` entries before them remain, whatever the changes add.
        for (k, v) in changes {
            match v {
                Some(v) => merged.insert(k, v),
                None => merged.remove(&k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }
}

/// What the loop knows to answer a query with.
pub(crate) struct Local<'a> {
    pub(crate) tables: &'a [TableDef],
    /// The tasks this worker runs.
    pub(crate) tasks: &'a crate::runtime::task::Tasks,
    /// The partitions being restored here.
    pub(crate) restoring: &'a dyn Fn(i32) -> bool,
    /// A standby store of (table, partition), if the worker keeps one and
    /// may read it now.
    pub(crate) standby: &'a dyn Fn(usize, i32) -> Option<&'a dyn Store>,
    /// The partitions of the app's topics (and of every table).
    pub(crate) partitions: i32,
}

impl Local<'_> {
    /// Partition `p` of table `id`, if a task here runs it.
    fn task(&self, p: i32, id: usize) -> Option<std::cell::Ref<'_, TablePart>> {
        self.tasks.get(&p)?.tables.get(id)?.try_borrow().ok()
    }
}

/// The partition `key` (encoded) lives in.
pub(crate) fn partition_of(key: &[u8], partitions: i32) -> i32 {
    faustus_wire::producer::partition_for_key(key, partitions)
}

/// Answers a query from what this worker holds.
pub(crate) fn answer(local: &Local<'_>, req: &TableRequest) -> Answer {
    let table = match local
        .tables
        .iter()
        .enumerate()
        .find(|(_, t)| t.name == req.table() && t.web.is_some())
    {
        Some(t) => t,
        None => return Answer::NoTable,
    };
    let result = match req {
        TableRequest::Get { key, standby, .. } => get(local, table, key, *standby),
        TableRequest::List { after, limit, .. } => list(local, table, after.as_deref(), *limit),
    };
    result.unwrap_or_else(|e| Answer::Failed(e.to_string()))
}

fn get(
    local: &Local<'_>,
    (id, def): (usize, &TableDef),
    key: &str,
    standby: bool,
) -> Result<Answer> {
    let Some(view) = &def.web else {
        return Ok(Answer::NoTable);
    };
    let raw = match (view.key)(key) {
        Ok(k) => k,
        Err(e) => return Ok(Answer::BadKey(e)),
    };
    let p = partition_of(&raw, local.partitions);
    let read = |src: &Source<'_>| read_key(src, def, view, &raw);
    if let Some(part) = local.task(p, id) {
        return read(&Source::Task(&part));
    }
    if standby {
        if let Some(store) = (local.standby)(id, p) {
            return read(&Source::Standby(store));
        }
    }
    if (local.restoring)(p) {
        return Ok(Answer::Restoring { partition: p });
    }
    Ok(Answer::Elsewhere { partition: p })
}

/// One key's value (a windowed table: its windows).
fn read_key(src: &Source<'_>, def: &TableDef, view: &WebView, key: &[u8]) -> Result<Answer> {
    if def.frozen_window.is_none() {
        return Ok(match src.get(key)? {
            Some(v) => Answer::Found((view.value_json)(&v)),
            None => Answer::Missing,
        });
    }
    let from = crate::window::key_prefix(key);
    let mut to = from.clone();
    // Every window key is the prefix and 16 bytes.
    to.extend_from_slice(&[0xFF; 17]);
    let windows: Vec<Value> = src
        .range(&from, Some(&to), usize::MAX)?
        .iter()
        .filter_map(|(k, v)| {
            let (_, w) = crate::window::parse_store_key(k)?;
            Some(json!({
                "start": w.start,
                "end": w.end,
                "value": (view.value_json)(crate::windowed::show_value(v)),
            }))
        })
        .collect();
    Ok(if windows.is_empty() {
        Answer::Missing
    } else {
        Answer::Found(Value::Array(windows))
    })
}

/// A page of the local partitions' entries, after the cursor
/// `partition/hex-of-stored-key`.
fn list(
    local: &Local<'_>,
    (id, def): (usize, &TableDef),
    after: Option<&str>,
    limit: usize,
) -> Result<Answer> {
    let Some(view) = &def.web else {
        return Ok(Answer::NoTable);
    };
    let (mut p, mut from) = match after.map(parse_cursor) {
        None => (0, Vec::new()),
        Some(Some((p, k))) => (p, next_key(k)),
        Some(None) => {
            return Ok(Answer::BadKey(format!(
                "cursor `{}` is not one this server gave",
                after.unwrap_or_default()
            )))
        }
    };
    let mut entries = Vec::new();
    let mut next = None;
    while p < local.partitions {
        if let Some(part) = local.task(p, id) {
            let page = Source::Task(&part).range(&from, None, limit - entries.len() + 1)?;
            for (k, v) in page {
                if entries.len() == limit {
                    next = entries
                        .last()
                        .map(|(p, k, _): &(i32, Vec<u8>, Value)| cursor(*p, k));
                    break;
                }
                let value = match &def.frozen_window {
                    None => (view.value_json)(&v),
                    Some(_) => (view.value_json)(crate::windowed::show_value(&v)),
                };
                entries.push((p, k, value));
            }
        }
        if next.is_some() {
            break;
        }
        p += 1;
        from = Vec::new();
    }
    let shown: Vec<Value> = entries
        .iter()
        .map(
            |(p, k, v)| match (def.frozen_window, crate::window::parse_store_key(k)) {
                (Some(_), Some((key, w))) => json!({
                    "partition": p, "key": (view.key_json)(key),
                    "window": {"start": w.start, "end": w.end}, "value": v,
                }),
                _ => json!({"partition": p, "key": (view.key_json)(k), "value": v}),
            },
        )
        .collect();
    Ok(Answer::Found(json!({ "entries": shown, "next": next })))
}

/// The smallest key after `k`.
fn next_key(mut k: Vec<u8>) -> Vec<u8> {
    k.push(0);
    k
}

fn cursor(p: i32, key: &[u8]) -> String {
    let mut s = format!("{p}/");
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_cursor(s: &str) -> Option<(i32, Vec<u8>)> {
    let (p, hex) = s.split_once('/')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((p.parse().ok()?, key))
}

#[cfg(test)]
mod tests;
