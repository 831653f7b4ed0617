//! Timers: code an app runs every so often or on a cron schedule (Faust's
//! `@app.timer` and `@app.crontab`, Kafka Streams' wall-clock
//! punctuators).
//!
//! A timer runs on the worker's loop, between polls, with a [`TimerCtx`]:
//! it may read and write this worker's partitions of tables and send
//! records. What it does is committed like an agent's work: under
//! exactly-once, in the open transaction with the agents' outputs.
//!
//! - **Drift-corrected.** An interval timer fires at its start plus whole
//!   intervals, however long its runs take; a cron timer at the schedule's
//!   times in its time zone.
//! - **A missed tick is not run twice.** A worker busy past several ticks
//!   runs the timer once, for the latest, and then keeps the schedule.
//! - **On the leader.** With [`Timer::on_leader`], one worker of the app
//!   runs it at a time: the one that owns the app's partition 0 (the group
//!   gives every partition to one member; when it leaves, the partition and
//!   the timer move on together).
//!
//! When a timer is due is decided by [`Schedule::next`], pure.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::str::FromStr;
use std::time::Duration;

use faustus_wire::producer::ProducerRecord;

use crate::app::{AgentFuture, Topic};
use crate::error::{Error, Result};
use crate::runtime::task::TaskCtx;
use crate::table::{Table, TableView};

/// When a timer fires.
#[derive(Debug, Clone)]
pub(crate) enum Schedule {
    /// Every interval (ms), from the worker's start.
    Every(i64),
    /// At the cron pattern's times in a time zone.
    Cron(Box<croner::Cron>, chrono_tz::Tz),
}

impl Schedule {
    /// A cron schedule: five fields (minute, hour, day of month, month,
    /// day of week), or six with seconds first.
    pub(crate) fn cron(pattern: &str, tz: chrono_tz::Tz) -> Result<Self> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(pattern)
            .or_else(|_| croner::Cron::from_str(pattern))
            .map_err(|e| Error::Config(format!("crontab `{pattern}`: {e}")))?;
        Ok(Self::Cron(Box::new(cron), tz))
    }

    /// The first time to fire for a worker starting at `start_ms`.
    pub(crate) fn first(&self, start_ms: i64) -> i64 {
        match self {
            Self::Every(ms) => start_ms.saturating_add(*ms),
            Self::Cron(..) => self.after(start_ms),
        }
    }

    /// The next time to fire after the tick due at `due_ms` ran at
    /// `now_ms`: the next tick of the schedule after `now_ms`, so that
    /// ticks a busy worker missed are not run again.
    pub(crate) fn next(&self, due_ms: i64, now_ms: i64) -> i64 {
        match self {
            Self::Every(ms) => {
                let ms = (*ms).max(1);
                let behind = now_ms.saturating_sub(due_ms).max(0);
                due_ms.saturating_add((behind / ms + 1).saturating_mul(ms))
            }
            Self::Cron(..) => self.after(now_ms.max(due_ms)),
        }
    }

    /// The cron schedule's first time after `ms`.
    fn after(&self, ms: i64) -> i64 {
        let Self::Cron(cron, tz) = self else {
            return ms;
        };
        use chrono::TimeZone;
        // Whole seconds: the pattern's times have no milliseconds.
        let Some(now) = tz.timestamp_opt(ms.div_euclid(1000), 0).single() else {
            return i64::MAX;
        };
        cron.find_next_occurrence(&now, false)
            .map_or(i64::MAX, |t| t.timestamp_millis())
    }
}

/// What a timer's code gets: this worker's table partitions, a way to
/// send records, and the time it was due.
pub struct TimerCtx {
    pub(crate) tasks: Vec<(i32, Rc<TaskCtx>)>,
    pub(crate) outbox: Rc<RefCell<Vec<ProducerRecord>>>,
    pub(crate) due_ms: i64,
}

impl std::fmt::Debug for TimerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerCtx")
            .field("due_ms", &self.due_ms)
            .field("partitions", &self.partitions())
            .finish()
    }
}

impl TimerCtx {
    /// When this tick was due (ms since the epoch; the virtual clock under
    /// the test driver).
    pub fn due_ms(&self) -> i64 {
        self.due_ms
    }

    /// The partitions (tasks) this worker owns now.
    pub fn partitions(&self) -> Vec<i32> {
        self.tasks.iter().map(|(p, _)| *p).collect()
    }

    /// This worker's partition `partition` of `table`, to read and write
    /// (its changes go to the changelog as an agent's do). Only one view of
    /// a table partition may be open at a time.
    pub fn table<'b, K, V>(
        &'b self,
        table: &'b Table<K, V>,
        partition: i32,
    ) -> Result<TableView<'b, K, V>> {
        let name = || table.name().to_owned();
        let task = self
            .tasks
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::Table {
                table: name(),
                message: format!("partition {partition} is not this worker's"),
            })?;
        let cell = task.tables.get(table.id()).ok_or_else(|| Error::Table {
            table: name(),
            message: "not a table of this app".into(),
        })?;
        let part = cell.try_borrow_mut().map_err(|_| Error::Table {
            table: name(),
            message: format!("partition {partition} is already open"),
        })?;
        if part.window.is_some() {
            return Err(Error::Table {
                table: name(),
                message: "a windowed table: timers cannot open it yet".into(),
            });
        }
        Ok(TableView {
            part,
            table,
            key_buf: Vec::new(),
        })
    }

    /// Sends a record (produced when the timer returns, in the transaction
    /// under exactly-once).
    pub fn send<K, V>(&self, topic: &Topic<K, V>, key: Option<&K>, value: &V) -> Result<()> {
        let rec = topic.record(key, value)?;
        self.outbox.borrow_mut().push(rec);
        Ok(())
    }
}

/// A timer with its types erased.
pub(crate) trait ErasedTimer {
    fn call(&self, ctx: TimerCtx) -> AgentFuture<'_>;
}

pub(crate) struct TypedTimer<F> {
    pub(crate) f: F,
}

impl<F> ErasedTimer for TypedTimer<F>
where
    F: AsyncFn(TimerCtx) -> Result<()>,
{
    fn call(&self, ctx: TimerCtx) -> AgentFuture<'_> {
        Box::pin((self.f)(ctx))
    }
}

/// A timer as the app keeps it.
#[derive(Clone)]
pub(crate) struct TimerDef {
    pub(crate) name: String,
    pub(crate) schedule: Schedule,
    /// Fires on each task's stream time instead of the wall clock.
    pub(crate) stream_time: bool,
    pub(crate) on_leader: Rc<Cell<bool>>,
    pub(crate) run: Rc<dyn ErasedTimer>,
}

/// A timer's handle (see [`App::timer`](crate::App::timer)).
#[derive(Debug, Clone)]
pub struct Timer {
    pub(crate) on_leader: Rc<Cell<bool>>,
}

impl Timer {
    /// Runs the timer on one worker of the app at a time (Faust's
    /// `on_leader=True`): the one that owns partition 0.
    pub fn on_leader(self) -> Self {
        self.on_leader.set(true);
        self
    }
}

/// `Duration` in ms, at least 1.
pub(crate) fn interval_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The timers of a worker, each with when it is next due.
pub(crate) struct Timers {
    pub(crate) timers: Vec<(TimerDef, i64)>,
    /// Stream-time timers, with when each task's is next due.
    pub(crate) stream: Vec<(TimerDef, std::collections::BTreeMap<i32, i64>)>,
}

/// The next multiple of `every` after `ts`.
pub(crate) fn next_boundary(ts: i64, every: i64) -> i64 {
    let every = every.max(1);
    ts.saturating_sub(ts.rem_euclid(every))
        .saturating_add(every)
}

impl Timers {
    /// The app's timers for a worker starting at `start_ms`.
    pub(crate) fn new(defs: &[TimerDef], start_ms: i64) -> Self {
        Self {
            timers: defs
                .iter()
                .filter(|d| !d.stream_time)
                .map(|d| (d.clone(), d.schedule.first(start_ms)))
                .collect(),
            stream: defs
                .iter()
                .filter(|d| d.stream_time)
                .map(|d| (d.clone(), std::collections::BTreeMap::new()))
                .collect(),
        }
    }

    /// Runs each stream-time timer for each task whose stream time reached
    /// its next multiple of the interval (once, however many it passed),
    /// with `due_ms` the task's stream time and only that task's
    /// partitions; returns what they sent.
    pub(crate) async fn run_stream_due(
        &mut self,
        tasks: &crate::runtime::task::Tasks,
    ) -> Result<Vec<ProducerRecord>> {
        let mut sent = Vec::new();
        for (def, next) in &mut self.stream {
            let Schedule::Every(every) = def.schedule else {
                continue;
            };
            next.retain(|p, _| tasks.contains_key(p));
            for (p, task) in tasks {
                let st = task.stream_time.get();
                if st == i64::MIN {
                    continue;
                }
                let due = next.entry(*p).or_insert_with(|| next_boundary(st, every));
                if st < *due {
                    continue;
                }
                *due = next_boundary(st, every);
                let outbox = Rc::new(RefCell::new(Vec::new()));
                let ctx = TimerCtx {
                    tasks: vec![(*p, task.clone())],
                    outbox: outbox.clone(),
                    due_ms: st,
                };
                def.run.call(ctx).await?;
                sent.append(&mut outbox.borrow_mut());
            }
        }
        Ok(sent)
    }

    /// Whether a timer is due at `now_ms`.
    pub(crate) fn due(&self, now_ms: i64) -> bool {
        self.timers.iter().any(|(_, at)| *at <= now_ms)
    }

    /// Runs the timers due at `now_ms` over `tasks` (the leader's timers
    /// only if `leader`), and returns what they sent. Each due timer moves
    /// to its next tick, run or not.
    pub(crate) async fn run_due(
        &mut self,
        now_ms: i64,
        tasks: &crate::runtime::task::Tasks,
        leader: bool,
    ) -> Result<Vec<ProducerRecord>> {
        let mut sent = Vec::new();
        for (def, at) in &mut self.timers {
            if *at > now_ms {
                continue;
            }
            let due = *at;
            *at = def.schedule.next(due, now_ms);
            if def.on_leader.get() && !leader {
                continue;
            }
            let outbox = Rc::new(RefCell::new(Vec::new()));
            let ctx = TimerCtx {
                tasks: tasks.iter().map(|(p, t)| (*p, t.clone())).collect(),
                outbox: outbox.clone(),
                due_ms: due,
            };
            tracing::debug!(timer = %def.name, due, "timer");
            def.run.call(ctx).await.map_err(|e| match e {
                Error::Config(m) => Error::Config(format!("timer {}: {m}", def.name)),
                other => other,
            })?;
            sent.append(&mut outbox.borrow_mut());
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_keeps_its_grid_and_skips_the_ticks_it_missed() {
        let s = Schedule::Every(100);
        assert_eq!(s.first(1_000), 1_100);
        // On time, or a little late: the next tick on the grid.
        assert_eq!(s.next(1_100, 1_100), 1_200);
        assert_eq!(s.next(1_100, 1_170), 1_200);
        // Busy past three ticks: the next one after now, once.
        assert_eq!(s.next(1_100, 1_420), 1_500);
        assert_eq!(s.next(1_100, 1_400), 1_500);
    }

    #[test]
    fn a_cron_schedule_fires_at_its_times_in_its_time_zone() {
        // 12:00:00 UTC on 2026-01-05 (a Monday).
        let noon = 1_767_614_400_000;
        let hourly = Schedule::cron("0 * * * *", chrono_tz::UTC).expect("five fields");
        assert_eq!(hourly.first(noon), noon + 3_600_000);
        assert_eq!(hourly.first(noon - 1), noon);
        // Missed ticks are not run again.
        assert_eq!(
            hourly.next(noon, noon + 2 * 3_600_000 + 5),
            noon + 3 * 3_600_000
        );
        // 09:30 in New York is 14:30 UTC in January.
        let ny = Schedule::cron("30 9 * * *", chrono_tz::America::New_York).expect("parse");
        assert_eq!(ny.first(noon), noon + 2 * 3_600_000 + 30 * 60_000);
        // Six fields: seconds first.
        let secs = Schedule::cron("*/10 * * * * *", chrono_tz::UTC).expect("six fields");
        assert_eq!(secs.first(noon), noon + 10_000);
        assert!(Schedule::cron("not a pattern", chrono_tz::UTC).is_err());
    }
}

#[cfg(test)]
mod driver_tests {
    use crate::prelude::*;
    use crate::testing::TestDriver;
    use std::time::Duration;

    fn app() -> App {
        App::new(
            "timers",
            Properties::new()
                .set("bootstrap.servers", "unused:9092")
                .set("processing.guarantee", "exactly_once")
                .set("topic.partitions", "3"),
        )
    }

    #[tokio::test]
    async fn a_timer_reads_and_writes_tables_and_sends_on_its_grid_without_repeating_missed_ticks()
    {
        let mut app = app();
        let words = app.topic_with::<String, String>("words", TopicSpec::new(Utf8, Utf8));
        let report = app.topic_with::<String, String>("report", TopicSpec::new(Utf8, Utf8));
        let counts = app.table_with::<String, u64>("counts", TableSpec::new(Utf8, Json, || 0));
        let ticks = app.table_with::<String, u64>("ticks", TableSpec::new(Utf8, Json, || 0));
        let table = counts.clone();
        app.agent(
            "count",
            &words,
            async move |batch: Batch<String, String>| {
                let mut t = batch.table(&table)?;
                for item in batch.items() {
                    let (_, w) = item?;
                    t.update(&w, |n| *n += 1)?;
                }
                Ok(())
            },
        );
        let (c, t, out) = (counts.clone(), ticks.clone(), report.clone());
        app.timer(
            "report",
            Duration::from_millis(100),
            async move |ctx: TimerCtx| {
                let mut words = 0;
                for p in ctx.partitions() {
                    words += ctx.table(&c, p)?.entries()?.len();
                }
                let n = ctx.table(&t, 0)?.update(&"n".to_owned(), |n| *n += 1)?;
                ctx.send(
                    &out,
                    Some(&format!("tick{n}")),
                    &format!("{words}@{}", ctx.due_ms()),
                )?;
                Ok(())
            },
        );
        let mut d = TestDriver::new(&app).expect("driver");
        for w in ["a", "b", "a"] {
            d.pipe(&words, Some(&w.to_owned()), &w.to_owned())
                .await
                .expect("pipe");
        }
        d.advance_wall_clock(Duration::from_millis(99))
            .await
            .expect("clock");
        assert!(
            d.read_output(&report).expect("read").is_empty(),
            "not due yet"
        );
        d.advance_wall_clock(Duration::from_millis(1))
            .await
            .expect("clock");
        d.advance_wall_clock(Duration::from_millis(100))
            .await
            .expect("clock");
        // Busy past two ticks (300, 400): one run, for 400.
        d.advance_wall_clock(Duration::from_millis(250))
            .await
            .expect("clock");
        let got = d.read_output(&report).expect("read");
        assert_eq!(
            got,
            vec![
                (Some("tick1".to_owned()), "2@100".to_owned()),
                (Some("tick2".to_owned()), "2@200".to_owned()),
                (Some("tick3".to_owned()), "2@300".to_owned()),
            ]
        );
        assert_eq!(d.table_get(&ticks, &"n".to_owned()).expect("get"), Some(3));
    }

    #[tokio::test]
    async fn a_crontab_fires_at_its_times_and_a_bad_pattern_stops_the_app() {
        let mut app = app();
        let words = app.topic_with::<String, String>("words", TopicSpec::new(Utf8, Utf8));
        let out = app.topic_with::<String, String>("out", TopicSpec::new(Utf8, Utf8));
        app.agent("noop", &words, async |_batch: Batch<String, String>| Ok(()));
        let sink = out.clone();
        app.crontab(
            "minutely",
            "* * * * *",
            chrono_tz::UTC,
            async move |ctx: TimerCtx| ctx.send(&sink, None, &ctx.due_ms().to_string()),
        )
        .on_leader();
        let mut d = TestDriver::new(&app).expect("driver");
        d.advance_wall_clock(Duration::from_secs(59))
            .await
            .expect("clock");
        d.advance_wall_clock(Duration::from_secs(1))
            .await
            .expect("clock");
        d.advance_wall_clock(Duration::from_secs(60))
            .await
            .expect("clock");
        let got: Vec<String> = d
            .read_output(&out)
            .expect("read")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, vec!["60000".to_owned(), "120000".to_owned()]);

        let mut bad = self::app();
        bad.crontab(
            "bad",
            "61 * * * *",
            chrono_tz::UTC,
            async |_ctx: TimerCtx| Ok(()),
        );
        let err = bad.topology().expect_err("a bad pattern").to_string();
        assert!(
            err.contains("timer bad") && err.contains("61 * * * *"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod stream_time_tests {
    use crate::prelude::*;
    use crate::testing::{TestDriver, TestRecord};
    use std::time::Duration;

    #[tokio::test]
    async fn a_stream_timer_fires_once_per_interval_of_each_tasks_stream_time() {
        let mut app = App::new(
            "stream-timers",
            Properties::new()
                .set("bootstrap.servers", "unused:9092")
                .set("topic.partitions", "3"),
        );
        let words = app.topic_with::<String, String>("words", TopicSpec::new(Utf8, Utf8));
        let out = app.topic_with::<String, String>("out", TopicSpec::new(Utf8, Utf8));
        app.agent("noop", &words, async |_b: Batch<String, String>| Ok(()));
        let sink = out.clone();
        app.stream_timer(
            "st",
            Duration::from_millis(100),
            async move |ctx: TimerCtx| {
                let p = ctx.partitions();
                ctx.send(&sink, None, &format!("{}:{p:?}", ctx.due_ms()))
            },
        );
        let mut d = TestDriver::new(&app).expect("driver");
        for ts in [50, 120, 130, 350, 340] {
            let rec = TestRecord::new("k".to_owned(), "w".to_owned()).timestamp(ts);
            d.pipe_record(&words, rec).await.expect("pipe");
        }
        let got: Vec<String> = d
            .read_output(&out)
            .expect("read")
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let p = faustus_wire::producer::partition_for_key(b"k", 3);
        assert_eq!(got, vec![format!("120:[{p}]"), format!("350:[{p}]")]);
        // The wall clock does not move it.
        d.advance_wall_clock(Duration::from_secs(10))
            .await
            .expect("clock");
        assert!(d.read_output(&out).expect("read").is_empty());
    }

    #[test]
    fn boundaries_are_the_next_multiple() {
        assert_eq!(super::next_boundary(50, 100), 100);
        assert_eq!(super::next_boundary(100, 100), 200);
        assert_eq!(super::next_boundary(-50, 100), 0);
    }
}
