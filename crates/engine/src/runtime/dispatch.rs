//! Dispatch: fetched batches to the agents of their topic, partitions in
//! parallel and each partition in order; `take` gathering; the error
//! policy and dead letters.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

use faustus_wire::consumer::{Fetched, TopicPartition};
use faustus_wire::producer::ProducerRecord;
use futures::StreamExt;

use super::task::{send_staged, Sink, TaskCtx, Tasks};
use crate::app::{AgentDef, ErrorPolicy};
use crate::batch::BatchInput;
use crate::error::{Error, Location, Result};

/// What an agent with `take` has gathered of one partition.
struct Gather {
    fetched: Vec<Rc<Fetched>>,
    records: usize,
    since: Instant,
}

/// How far one partition's input got in a dispatch.
#[derive(Debug)]
pub(crate) struct Progress {
    /// The input partition.
    pub(crate) tp: TopicPartition,
    /// Processed up to here (exclusive): what may be committed.
    pub(crate) at: i64,
    /// Records handed to agents.
    pub(crate) records: u64,
}

/// Feeds agents.
pub(crate) struct Dispatcher {
    agents: Vec<AgentDef>,
    /// Agents by topic.
    by_topic: HashMap<String, Vec<usize>>,
    concurrency: usize,
    /// Fetches gathered for agents with `take`, by agent and partition.
    gathered: RefCell<HashMap<(usize, TopicPartition), Gather>>,
}

impl Dispatcher {
    /// A dispatcher for these agents.
    pub(crate) fn new(agents: Vec<AgentDef>) -> Self {
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in agents.iter().enumerate() {
            by_topic.entry(a.topic.clone()).or_default().push(i);
        }
        let concurrency = agents
            .iter()
            .map(|a| a.options.concurrency)
            .max()
            .unwrap_or(1);
        Self {
            agents,
            by_topic,
            concurrency,
            gathered: RefCell::new(HashMap::new()),
        }
    }

    /// Drops everything gathered (a rollback or a rewind: it is read again).
    pub(crate) fn clear(&self) {
        self.gathered.borrow_mut().clear();
    }

    /// Drops what was gathered of partitions this worker no longer has.
    pub(crate) fn forget(&self, gone: &[TopicPartition]) {
        self.gathered
            .borrow_mut()
            .retain(|(_, tp), _| !gone.contains(tp));
    }

    /// Feeds one poll's batches to the agents: partitions in parallel (up to
    /// the agents' concurrency), each partition's batches in order.
    pub(crate) async fn process<S: Sink>(
        &self,
        tasks: &Tasks,
        fetched: Vec<Fetched>,
        sink: &S,
        now: Instant,
    ) -> Result<Vec<Progress>> {
        let mut by_partition: BTreeMap<i32, Vec<Rc<Fetched>>> = BTreeMap::new();
        for f in fetched {
            by_partition
                .entry(f.partition())
                .or_default()
                .push(Rc::new(f));
        }
        let jobs = by_partition.into_iter().map(|(p, fs)| async move {
            let task = tasks
                .get(&p)
                .cloned()
                .ok_or_else(|| Error::Config(format!("partition {p} fetched without its task")))?;
            let mut done = Vec::new();
            for f in fs {
                self.feed(&f, &task, sink, now).await?;
                done.push(Progress {
                    tp: f.topic_partition().clone(),
                    at: f.next_offset(),
                    records: f.next_offset().saturating_sub(f.start_offset()) as u64,
                });
            }
            Ok::<_, Error>(done)
        });
        let results: Vec<Result<_>> = futures::stream::iter(jobs)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut progress = Vec::new();
        for r in results {
            for mut p in r? {
                p.at = self.position(&p.tp, p.at);
                progress.push(p);
            }
        }
        Ok(progress)
    }

    /// Where a partition's input is processed up to: `next`, or the first
    /// record an agent still gathers for a `take`.
    fn position(&self, tp: &TopicPartition, next: i64) -> i64 {
        self.gathered
            .borrow()
            .iter()
            .filter(|((_, t), g)| t == tp && !g.fetched.is_empty())
            .filter_map(|(_, g)| g.fetched.first().map(|f| f.start_offset()))
            .min()
            .unwrap_or(next)
    }

    /// Hands one fetch to each agent of its topic (or to its gathering, for
    /// agents with `take`), then produces what they staged.
    async fn feed<S: Sink>(
        &self,
        f: &Rc<Fetched>,
        task: &Rc<TaskCtx>,
        sink: &S,
        now: Instant,
    ) -> Result<()> {
        let Some(agents) = self.by_topic.get(f.topic()) else {
            return Ok(());
        };
        for &i in agents {
            let ready = match self.agents[i].options.take {
                None => Some(vec![f.clone()]),
                Some((n, _)) => {
                    let mut gathered = self.gathered.borrow_mut();
                    let g = gathered
                        .entry((i, f.topic_partition().clone()))
                        .or_insert_with(|| Gather {
                            fetched: Vec::new(),
                            records: 0,
                            since: now,
                        });
                    if g.fetched.is_empty() {
                        g.since = now;
                    }
                    g.fetched.push(f.clone());
                    g.records += f.next_offset().saturating_sub(f.start_offset()) as usize;
                    if g.records >= n {
                        g.records = 0;
                        Some(std::mem::take(&mut g.fetched))
                    } else {
                        None
                    }
                }
            };
            if let Some(fs) = ready {
                self.call_agent(i, fs, task).await?;
            }
        }
        send_staged(task, sink).await
    }

    /// Whether some `take` gathering has waited `within` at `now` (or holds
    /// anything at all, with `all`).
    pub(crate) fn gathering_due(&self, all: bool, now: Instant) -> bool {
        !self.due(all, now).is_empty()
    }

    fn due(&self, all: bool, now: Instant) -> Vec<(usize, TopicPartition)> {
        self.gathered
            .borrow()
            .iter()
            .filter(|((i, _), g)| {
                !g.fetched.is_empty()
                    && self.agents[*i].options.take.is_some_and(|(_, within)| {
                        all || now.saturating_duration_since(g.since) >= within
                    })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Calls the agents whose `take` gathering has waited `within` (all of
    /// them with `all`).
    pub(crate) async fn flush_gathered<S: Sink>(
        &self,
        tasks: &Tasks,
        sink: &S,
        all: bool,
        now: Instant,
    ) -> Result<Vec<Progress>> {
        let mut progress = Vec::new();
        for (i, tp) in self.due(all, now) {
            let fs = match self.gathered.borrow_mut().get_mut(&(i, tp.clone())) {
                Some(g) => {
                    g.records = 0;
                    std::mem::take(&mut g.fetched)
                }
                None => continue,
            };
            let Some(last) = fs.last() else { continue };
            let next = last.next_offset();
            let Some(task) = tasks.get(&tp.partition).cloned() else {
                continue;
            };
            self.call_agent(i, fs, &task).await?;
            send_staged(&task, sink).await?;
            let at = self.position(&tp, next);
            // Counted when fetched.
            progress.push(Progress { tp, at, records: 0 });
        }
        Ok(progress)
    }

    /// Calls agent `i` with the records of `fs`, applying its error policy:
    /// after a failed record it is called again with the rest.
    async fn call_agent(&self, i: usize, fs: Vec<Rc<Fetched>>, task: &Rc<TaskCtx>) -> Result<()> {
        let agent = &self.agents[i];
        let Some(first) = fs.first() else {
            return Ok(());
        };
        let (topic, partition) = (first.topic().to_owned(), first.partition());
        let mut from = first.start_offset();
        loop {
            let input = BatchInput {
                fetched: fs.clone(),
                from,
                task: task.clone(),
            };
            let Err(e) = agent.run.call(input).await else {
                return Ok(());
            };
            let at = match e.location() {
                Some(at) if at.topic == topic && at.partition == partition && at.offset >= from => {
                    at.clone()
                }
                _ => return Err(e),
            };
            match &agent.options.on_error {
                ErrorPolicy::Stop => return Err(e),
                ErrorPolicy::Skip => {
                    tracing::warn!(agent = %agent.name, error = %e, "skipping record");
                }
                ErrorPolicy::DeadLetter(dlq) => {
                    tracing::warn!(agent = %agent.name, error = %e, dead_letters = %dlq, "dead-lettering record");
                    let rec = dead_letter(&fs, &at, dlq, &e.to_string())?;
                    task.outbox.borrow_mut().push(rec);
                }
            }
            from = at.offset + 1;
        }
    }
}

/// The dead-letter copy of the record at `at`: the record as it was, with
/// headers naming where it came from and why it failed.
fn dead_letter(
    fs: &[Rc<Fetched>],
    at: &Location,
    topic: &str,
    error: &str,
) -> Result<ProducerRecord> {
    for rec in fs.iter().flat_map(|f| f.records()) {
        let rec = rec?;
        if rec.offset != at.offset {
            continue;
        }
        let mut out = ProducerRecord::new(topic)
            .header("faustus.source.topic", at.topic.clone().into_bytes())
            .header(
                "faustus.source.partition",
                at.partition.to_string().into_bytes(),
            )
            .header("faustus.source.offset", at.offset.to_string().into_bytes())
            .header("faustus.error", error.as_bytes().to_vec());
        out.key = rec.key().map(bytes::Bytes::copy_from_slice);
        out.value = rec.value().map(bytes::Bytes::copy_from_slice);
        out.timestamp = Some(rec.timestamp);
        return Ok(out);
    }
    Err(Error::Processing {
        at: at.clone(),
        message: "dead-lettering: record not found in its batch".into(),
    })
}
