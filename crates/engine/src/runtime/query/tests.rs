use std::rc::Rc;

use super::*;
use crate::codec::{Json, Utf8};
use crate::runtime::task::{TaskCtx, Tasks};
use crate::store::MemoryStore;
use crate::table::{Table, TableSpec};
use crate::web::{Answer, TableRequest};

const PARTITIONS: i32 = 4;

/// A table `counts` (UTF-8 keys, JSON values) whose partitions in
/// `owned` run here, with `keys` written: four in five in the store, the rest pending.
fn setup(owned: &[i32], keys: &[&str]) -> (Vec<TableDef>, Tasks) {
    let (_, def) =
        Table::<String, u64>::declare(0, "app", "counts", TableSpec::new(Utf8, Json, || 0));
    let mut tasks = Tasks::new();
    for &p in owned {
        let mut part = TablePart::new(
            "counts".into(),
            def.changelog.clone(),
            p,
            Box::new(MemoryStore::default()),
        );
        let mine: Vec<(usize, &&str)> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| partition_of(k.as_bytes(), PARTITIONS) == p)
            .collect();
        let mut stored = Vec::new();
        for (i, k) in mine {
            let v = Some(format!("{i}").into_bytes());
            if i % 5 != 0 {
                stored.push((k.as_bytes().to_vec(), v));
            } else {
                part.put_raw(k.as_bytes().to_vec(), v);
            }
        }
        part.store.apply(&mut stored.into_iter(), 0).expect("apply");
        tasks.insert(p, Rc::new(TaskCtx::new(vec![part])));
    }
    (vec![def], tasks)
}

fn get(key: &str) -> TableRequest {
    TableRequest::Get {
        table: "counts".into(),
        key: key.into(),
        standby: false,
    }
}

fn local<'a>(
    tables: &'a [TableDef],
    tasks: &'a Tasks,
    restoring: &'a dyn Fn(i32) -> bool,
) -> Local<'a> {
    Local {
        tables,
        tasks,
        restoring,
        standby: &|_, _| None,
        partitions: PARTITIONS,
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("/page/{i}")).collect()
}

#[test]
fn a_key_is_answered_where_its_partition_runs_and_sent_on_elsewhere() {
    let names = keys(40);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (tables, tasks) = setup(&[0, 2], &refs);
    let restoring = |p| p == 3;
    let l = local(&tables, &tasks, &restoring);
    for (i, k) in names.iter().enumerate() {
        let p = partition_of(k.as_bytes(), PARTITIONS);
        let expected = match p {
            0 | 2 => Answer::Found(serde_json::json!(i)),
            3 => Answer::Restoring { partition: 3 },
            _ => Answer::Elsewhere { partition: p },
        };
        assert_eq!(answer(&l, &get(k)), expected, "{k} in partition {p}");
    }
    let absent = (0..)
        .map(|i| format!("/absent/{i}"))
        .find(|k| partition_of(k.as_bytes(), PARTITIONS) == 0);
    assert_eq!(answer(&l, &get(&absent.expect("a key"))), Answer::Missing);
    let no_table = TableRequest::Get {
        table: "nope".into(),
        key: "k".into(),
        standby: false,
    };
    assert_eq!(answer(&l, &no_table), Answer::NoTable);
}

#[test]
fn a_deleted_pending_key_is_missing_though_the_store_has_it() {
    let names = keys(40);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (tables, tasks) = setup(&[0, 1, 2, 3], &refs);
    let k = &names[0];
    let p = partition_of(k.as_bytes(), PARTITIONS);
    tasks[&p].tables[0]
        .borrow_mut()
        .put_raw(k.as_bytes().to_vec(), None);
    let restoring = |_| false;
    assert_eq!(
        answer(&local(&tables, &tasks, &restoring), &get(k)),
        Answer::Missing
    );
}

/// Pages through the local entries `limit` at a time.
fn all_pages(l: &Local<'_>, limit: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let req = TableRequest::List {
            table: "counts".into(),
            after: after.clone(),
            limit,
        };
        let Answer::Found(page) = answer(l, &req) else {
            panic!("no page");
        };
        let entries = page["entries"].as_array().expect("entries");
        assert!(entries.len() <= limit);
        for e in entries {
            out.push((
                e["key"].as_str().expect("key").to_owned(),
                e["value"].as_u64().expect("value"),
            ));
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return out,
        }
    }
}

proptest::proptest! {
    /// Any page size lists each local key once with its latest value,
    /// pending changes and deletions included.
    #[test]
    fn pages_list_every_local_entry_once(n in 0usize..60, limit in 1usize..9, deleted in proptest::collection::vec(0usize..60, 0..10)) {
        let names = keys(n);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (tables, tasks) = setup(&[1, 3], &refs);
        for &d in &deleted {
            if let Some(k) = names.get(d) {
                let p = partition_of(k.as_bytes(), PARTITIONS);
                if let Some(t) = tasks.get(&p) {
                    t.tables[0].borrow_mut().put_raw(k.as_bytes().to_vec(), None);
                }
            }
        }
        let restoring = |_| false;
        let mut got = all_pages(&local(&tables, &tasks, &restoring), limit);
        let mut expected: Vec<(String, u64)> = names
            .iter()
            .enumerate()
            .filter(|(i, k)| [1, 3].contains(&partition_of(k.as_bytes(), PARTITIONS)) && !deleted.contains(i))
            .map(|(i, k)| (k.clone(), i as u64))
            .collect();
        got.sort();
        expected.sort();
        proptest::prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_bad_cursor_is_refused() {
    let (tables, tasks) = setup(&[0], &[]);
    let restoring = |_| false;
    let req = TableRequest::List {
        table: "counts".into(),
        after: Some("zz".into()),
        limit: 10,
    };
    assert!(matches!(
        answer(&local(&tables, &tasks, &restoring), &req),
        Answer::BadKey(_)
    ));
}

#[test]
fn a_standby_answers_only_when_the_query_allows_it() {
    let names = keys(20);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (tables, tasks) = setup(&[0], &refs);
    let k = names
        .iter()
        .find(|k| partition_of(k.as_bytes(), PARTITIONS) == 1)
        .expect("a key of partition 1");
    let mut standby = MemoryStore::default();
    standby
        .apply(
            &mut [(k.as_bytes().to_vec(), Some(b"41".to_vec()))].into_iter(),
            7,
        )
        .expect("apply");
    let standby_of = |t: usize, p: i32| (t == 0 && p == 1).then_some(&standby as &dyn Store);
    let restoring = |_| false;
    let l = Local {
        standby: &standby_of,
        ..local(&tables, &tasks, &restoring)
    };
    assert_eq!(answer(&l, &get(k)), Answer::Elsewhere { partition: 1 });
    let allowed = TableRequest::Get {
        table: "counts".into(),
        key: k.clone(),
        standby: true,
    };
    assert_eq!(answer(&l, &allowed), Answer::Found(serde_json::json!(41)));
}
