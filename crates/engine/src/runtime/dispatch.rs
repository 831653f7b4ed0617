//! Dispatch: fetched batches to the agents of their topic, partitions in
//! parallel and each partition in order; `take` gathering; the error
//! policy and dead letters.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use faustus_wire::consumer::{Fetched, TopicPartition};
use faustus_wire::producer::ProducerRecord;
use futures::StreamExt;

use super::order::{self, Choice, TaskIdle};
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

/// How many records a task holds of one joined input, waiting for the
/// other input, before that input is paused (Kafka Streams'
/// `buffered.records.per.partition`).
pub(crate) const MAX_HELD: usize = 1000;

/// What a task holds of one input of a join: fetched, not processed yet.
struct Held {
    tp: TopicPartition,
    fetched: VecDeque<Rc<Fetched>>,
    /// Offset and timestamp of each record not processed yet.
    records: VecDeque<(i64, i64)>,
    /// The offset after the last record handed to the task.
    next: Option<i64>,
}

/// One task's joined inputs, read in timestamp order (see [`order`]).
struct Merge {
    inputs: Vec<Held>,
    deadlines: Vec<Option<Instant>>,
}

impl Merge {
    fn new(topics: &[String], partition: i32) -> Self {
        Self {
            inputs: topics
                .iter()
                .map(|t| Held {
                    tp: TopicPartition {
                        topic: t.as_str().into(),
                        partition,
                    },
                    fetched: VecDeque::new(),
                    records: VecDeque::new(),
                    next: None,
                })
                .collect(),
            deadlines: vec![None; topics.len()],
        }
    }

    fn holds(&self) -> bool {
        self.inputs.iter().any(|h| !h.records.is_empty())
    }

    fn choose(
        &mut self,
        lag: &dyn Fn(&TopicPartition) -> Option<i64>,
        idle: TaskIdle,
        now: Instant,
    ) -> Choice {
        let heads: Vec<Option<i64>> = self
            .inputs
            .iter()
            .map(|h| h.records.front().map(|r| r.1))
            .collect();
        let lags: Vec<Option<i64>> = self.inputs.iter().map(|h| lag(&h.tp)).collect();
        order::choose(&heads, &lags, idle, &mut self.deadlines, now)
    }
}

/// Offset and timestamp of each record of a fetch; a record that cannot
/// be read ends the list with the smallest timestamp, so that it is handed
/// out (and its error met) at once.
fn index_records(f: &Fetched) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for r in f.records() {
        match r {
            Ok(r) => out.push((r.offset, r.timestamp)),
            Err(_) => {
                let at = out.last().map_or(f.start_offset(), |&(o, _)| o + 1);
                out.push((at, i64::MIN));
                break;
            }
        }
    }
    out
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
    /// Groups of topics read in timestamp order (joined inputs), each in
    /// the order that breaks timestamp ties.
    groups: Vec<Vec<String>>,
    /// The group of each joined topic, and its place in it.
    ordered: HashMap<String, (usize, usize)>,
    /// What each task holds of its joined inputs, by group and partition.
    merges: RefCell<BTreeMap<(usize, i32), Merge>>,
    /// `max.task.idle.ms`.
    idle: TaskIdle,
    /// Records the error policy skipped, and dead-lettered, since the
    /// worker started.
    pub(crate) skipped: std::cell::Cell<u64>,
    pub(crate) dead_lettered: std::cell::Cell<u64>,
    /// Records handed to each agent (by agent index and input partition)
    /// since the loop last took them, counted by offsets.
    pub(crate) handed: RefCell<BTreeMap<(usize, TopicPartition), u64>>,
}

impl Dispatcher {
    /// A dispatcher for these agents; the topics of each of `groups` are
    /// read in timestamp order.
    pub(crate) fn new(agents: Vec<AgentDef>, groups: Vec<Vec<String>>, idle: TaskIdle) -> Self {
        let mut by_topic: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in agents.iter().enumerate() {
            by_topic.entry(a.topic.clone()).or_default().push(i);
        }
        let concurrency = agents
            .iter()
            .map(|a| a.options.concurrency)
            .max()
            .unwrap_or(1);
        let ordered = groups
            .iter()
            .enumerate()
            .flat_map(|(g, topics)| {
                topics
                    .iter()
                    .enumerate()
                    .map(move |(i, t)| (t.clone(), (g, i)))
            })
            .collect();
        Self {
            agents,
            by_topic,
            concurrency,
            gathered: RefCell::new(HashMap::new()),
            groups,
            ordered,
            merges: RefCell::new(BTreeMap::new()),
            idle,
            skipped: std::cell::Cell::new(0),
            dead_lettered: std::cell::Cell::new(0),
            handed: RefCell::new(BTreeMap::new()),
        }
    }

    /// Drops everything gathered and held (a rollback or a rewind: it is
    /// read again).
    pub(crate) fn clear(&self) {
        self.gathered.borrow_mut().clear();
        self.merges.borrow_mut().clear();
    }

    /// Drops what was gathered and held of partitions this worker no
    /// longer has.
    pub(crate) fn forget(&self, gone: &[TopicPartition]) {
        self.gathered
            .borrow_mut()
            .retain(|(_, tp), _| !gone.contains(tp));
        self.merges
            .borrow_mut()
            .retain(|_, m| !m.inputs.iter().any(|h| gone.contains(&h.tp)));
    }

    /// Whether some task holds joined records it can process now (the
    /// input it waited for was fetched, or turned out caught up).
    pub(crate) fn ordered_ready(
        &self,
        lag: &dyn Fn(&TopicPartition) -> Option<i64>,
        now: Instant,
    ) -> bool {
        self.merges
            .borrow_mut()
            .values_mut()
            .filter(|m| m.holds())
            .any(|m| matches!(m.choose(lag, self.idle, now), Choice::Run { .. }))
    }

    /// Joined inputs of which a task holds more than [`MAX_HELD`]
    /// records: to pause until the other inputs catch up.
    pub(crate) fn over_full(&self) -> BTreeSet<TopicPartition> {
        self.merges
            .borrow()
            .values()
            .flat_map(|m| m.inputs.iter())
            .filter(|h| h.records.len() > MAX_HELD)
            .map(|h| h.tp.clone())
            .collect()
    }

    /// The agents' names, by index.
    pub(crate) fn agent_name(&self, i: usize) -> &str {
        &self.agents[i].name
    }

    /// Feeds one poll's batches to the agents: partitions in parallel (up to
    /// the agents' concurrency), each partition's batches in order.
    pub(crate) async fn process<S: Sink>(
        &self,
        tasks: &Tasks,
        fetched: Vec<Fetched>,
        sink: &S,
        now: Instant,
        lag: &dyn Fn(&TopicPartition) -> Option<i64>,
    ) -> Result<Vec<Progress>> {
        let mut by_partition: BTreeMap<i32, Vec<Rc<Fetched>>> = BTreeMap::new();
        let mut held = Vec::new();
        for f in fetched {
            let p = f.partition();
            let f = Rc::new(f);
            match self.ordered.get(f.topic()) {
                Some(&(g, i)) => {
                    held.push(Progress {
                        tp: f.topic_partition().clone(),
                        at: f.next_offset(),
                        records: f.next_offset().saturating_sub(f.start_offset()) as u64,
                    });
                    let mut merges = self.merges.borrow_mut();
                    let m = merges
                        .entry((g, p))
                        .or_insert_with(|| Merge::new(&self.groups[g], p));
                    let h = &mut m.inputs[i];
                    h.records.extend(index_records(&f));
                    h.next = Some(f.next_offset());
                    h.fetched.push_back(f);
                    by_partition.entry(p).or_default();
                }
                None => by_partition.entry(p).or_default().push(f),
            }
        }
        for (&(_, p), m) in self.merges.borrow().iter() {
            if m.holds() {
                by_partition.entry(p).or_default();
            }
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
            for g in 0..self.groups.len() {
                done.extend(self.drain(g, p, &task, sink, lag, now).await?);
            }
            Ok::<_, Error>(done)
        });
        let results: Vec<Result<_>> = futures::stream::iter(jobs)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut progress = held;
        for r in results {
            progress.extend(r?);
        }
        for p in &mut progress {
            p.at = self.position(&p.tp, p.at);
        }
        Ok(progress)
    }

    /// Processes what task `p` holds of group `g`'s inputs, in timestamp
    /// order, until it must wait for an input or holds nothing. Returns
    /// how far each input it read got.
    async fn drain<S: Sink>(
        &self,
        g: usize,
        p: i32,
        task: &Rc<TaskCtx>,
        sink: &S,
        lag: &dyn Fn(&TopicPartition) -> Option<i64>,
        now: Instant,
    ) -> Result<Vec<Progress>> {
        // Out of the map while agents run: other partitions' jobs use it
        // meanwhile.
        let Some(mut m) = self.merges.borrow_mut().remove(&(g, p)) else {
            return Ok(Vec::new());
        };
        let result = self.drain_merge(g, &mut m, task, sink, lag, now).await;
        self.merges.borrow_mut().insert((g, p), m);
        result
    }

    async fn drain_merge<S: Sink>(
        &self,
        g: usize,
        m: &mut Merge,
        task: &Rc<TaskCtx>,
        sink: &S,
        lag: &dyn Fn(&TopicPartition) -> Option<i64>,
        now: Instant,
    ) -> Result<Vec<Progress>> {
        let mut ran = vec![false; m.inputs.len()];
        while let Choice::Run { input, bound } = m.choose(lag, self.idle, now) {
            let h = &mut m.inputs[input];
            let n = order::run_len(h.records.iter().map(|r| r.1), input, bound);
            let from = h.records.front().map_or(0, |r| r.0);
            let until = h
                .records
                .get(n)
                .map_or_else(|| h.next.unwrap_or(i64::MAX), |r| r.0);
            let fs: Vec<Rc<Fetched>> = h
                .fetched
                .iter()
                .filter(|f| f.next_offset() > from && f.start_offset() < until)
                .cloned()
                .collect();
            if let Some(agents) = self.by_topic.get(&self.groups[g][input]) {
                for &i in agents {
                    self.call_agent(i, fs.clone(), from, until, task).await?;
                }
            }
            send_staged(task, sink).await?;
            let h = &mut m.inputs[input];
            task.advance_stream_time(h.records.iter().take(n).map(|r| r.1).max());
            h.records.drain(..n);
            while h.fetched.front().is_some_and(|f| f.next_offset() <= until) {
                h.fetched.pop_front();
            }
            ran[input] = true;
        }
        Ok(m.inputs
            .iter()
            .zip(ran)
            .filter(|(_, ran)| *ran)
            .filter_map(|(h, _)| {
                h.next.map(|at| Progress {
                    tp: h.tp.clone(),
                    at,
                    records: 0,
                })
            })
            .collect())
    }

    /// Where a partition's input is processed up to: `next`, or the first
    /// record an agent still gathers for a `take`, or the first a join
    /// holds.
    fn position(&self, tp: &TopicPartition, next: i64) -> i64 {
        let gathered = self
            .gathered
            .borrow()
            .iter()
            .filter(|((_, t), g)| t == tp && !g.fetched.is_empty())
            .filter_map(|(_, g)| g.fetched.first().map(|f| f.start_offset()))
            .min();
        let held = self.ordered.get(&*tp.topic).and_then(|&(g, i)| {
            self.merges
                .borrow()
                .get(&(g, tp.partition))
                .and_then(|m| m.inputs[i].records.front().map(|r| r.0))
        });
        gathered.into_iter().chain(held).min().unwrap_or(next)
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
        if agents
            .iter()
            .all(|&i| self.agents[i].options.take.is_none())
        {
            // Gathered records count once an agent has them.
            task.advance_stream_time(f.batches().iter().map(|b| b.max_timestamp()).max());
        }
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
                let from = fs.first().map_or(0, |f| f.start_offset());
                self.call_agent(i, fs, from, i64::MAX, task).await?;
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
            let from = fs.first().map_or(0, |f| f.start_offset());
            let max_ts = fs
                .iter()
                .flat_map(|f| f.batches())
                .map(|b| b.max_timestamp())
                .max();
            self.call_agent(i, fs, from, i64::MAX, &task).await?;
            task.advance_stream_time(max_ts);
            send_staged(&task, sink).await?;
            let at = self.position(&tp, next);
            // Counted when fetched.
            progress.push(Progress { tp, at, records: 0 });
        }
        Ok(progress)
    }

    /// Calls agent `i` with the records of `fs` in `[from, until)`,
    /// applying its error policy: after a failed record it is called again
    /// with the rest.
    async fn call_agent(
        &self,
        i: usize,
        fs: Vec<Rc<Fetched>>,
        mut from: i64,
        until: i64,
        task: &Rc<TaskCtx>,
    ) -> Result<()> {
        let agent = &self.agents[i];
        let Some(first) = fs.first() else {
            return Ok(());
        };
        let (topic, partition) = (first.topic().to_owned(), first.partition());
        let end = fs.last().map_or(from, |f| f.next_offset()).min(until);
        *self
            .handed
            .borrow_mut()
            .entry((i, first.topic_partition().clone()))
            .or_default() += end.saturating_sub(from).max(0) as u64;
        loop {
            let input = BatchInput {
                fetched: fs.clone(),
                from,
                until,
                task: task.clone(),
            };
            // A span per call, for those who collect traces.
            let span = tracing::debug_span!("agent", agent = %agent.name, %topic, partition, from);
            let Err(e) = tracing::Instrument::instrument(agent.run.call(input), span).await else {
                return Ok(());
            };
            let at = match e.location() {
                Some(at)
                    if at.topic == topic
                        && at.partition == partition
                        && at.offset >= from
                        && at.offset < until =>
                {
                    at.clone()
                }
                _ => return Err(e),
            };
            match &agent.options.on_error {
                ErrorPolicy::Stop => return Err(e),
                ErrorPolicy::Skip => {
                    tracing::warn!(agent = %agent.name, error = %e, "skipping record");
                    self.skipped.set(self.skipped.get() + 1);
                }
                ErrorPolicy::DeadLetter(dlq) => {
                    self.dead_lettered.set(self.dead_lettered.get() + 1);
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
