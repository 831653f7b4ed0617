//! The topology: what an [`App`](crate::App) declared, frozen and checked.
//!
//! The app is the registry a program fills in; [`App::topology`](crate::App::topology)
//! turns it into this immutable description, and the runtime (a worker, or
//! the [`TestDriver`](crate::testing::TestDriver)) runs that. Nothing of the
//! runtime reads the app itself.

use std::collections::BTreeMap;

use crate::app::{AgentDef, ErrorPolicy, TopicDef};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::global::GlobalDef;
use crate::table::TableDef;

/// An app's topics, tables and agents with its settings, checked and
/// frozen: what a worker or a test driver runs.
pub struct Topology {
    pub(crate) config: EngineConfig,
    pub(crate) topics: Vec<TopicDef>,
    pub(crate) tables: Vec<TableDef>,
    pub(crate) agents: Vec<AgentDef>,
    pub(crate) globals: Vec<GlobalDef>,
    /// Groups of topics a task reads in timestamp order (joined inputs),
    /// each in the order that breaks timestamp ties; no topic in two.
    pub(crate) ordered: Vec<Vec<String>>,
    /// The timers.
    pub(crate) timers: Vec<crate::timer::TimerDef>,
    /// The app's own web pages.
    pub(crate) pages: axum::Router,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("app", &self.config.app_id)
            .field("sources", &self.source_topics())
            .field(
                "tables",
                &self.tables.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Topology {
    /// Freezes what an app declared; fails on a combination the runtime
    /// cannot run.
    pub(crate) fn new(
        config: EngineConfig,
        topics: Vec<TopicDef>,
        tables: Vec<TableDef>,
        agents: Vec<AgentDef>,
        globals: Vec<GlobalDef>,
        ordered: &[Vec<String>],
        problems: &[String],
    ) -> Result<Self> {
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        check_take_alone(
            agents
                .iter()
                .map(|a| (a.name.as_str(), a.topic.as_str(), a.options.take.is_some())),
        )?;
        let ordered = merge_groups(ordered);
        for a in &agents {
            if a.options.take.is_some() && ordered.iter().flatten().any(|t| *t == a.topic) {
                return Err(Error::Config(format!(
                    "agent {} uses take() on topic {}, which a join reads in timestamp order",
                    a.name, a.topic
                )));
            }
        }
        Ok(Self {
            config,
            topics,
            tables,
            agents,
            globals,
            ordered,
            timers: Vec::new(),
            pages: axum::Router::new(),
        })
    }

    /// The topology with these timers.
    pub(crate) fn with_timers(mut self, timers: Vec<crate::timer::TimerDef>) -> Self {
        self.timers = timers;
        self
    }

    pub(crate) fn with_pages(mut self, pages: axum::Router) -> Self {
        self.pages = pages;
        self
    }

    /// The groups of topics read in timestamp order.
    pub fn ordered_groups(&self) -> &[Vec<String>] {
        &self.ordered
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The topics agents read, sorted, each once.
    pub fn source_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self.agents.iter().map(|a| a.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// The agents' names and topics, in the order they were registered.
    pub fn agents(&self) -> impl Iterator<Item = (&str, &str)> {
        self.agents
            .iter()
            .map(|a| (a.name.as_str(), a.topic.as_str()))
    }

    /// The tables' names and changelog topics.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tables.iter().map(|t| (t.name.as_str(), &*t.changelog))
    }

    /// The dead-letter topics agents' error policies name.
    pub(crate) fn dead_letter_topics(&self) -> impl Iterator<Item = &str> {
        self.agents
            .iter()
            .filter_map(|a| match &a.options.on_error {
                ErrorPolicy::DeadLetter(t) => Some(t.as_str()),
                _ => None,
            })
    }
}

/// Joins that share a topic read all their topics in one timestamp order:
/// overlapping groups are merged, each topic kept where it first appeared.
fn merge_groups(groups: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut merged: Vec<Vec<String>> = Vec::new();
    for g in groups {
        let mut group: Vec<String> = Vec::new();
        let mut rest = Vec::new();
        for m in merged {
            if m.iter().any(|t| g.contains(t)) {
                for t in m {
                    if !group.contains(&t) {
                        group.push(t);
                    }
                }
            } else {
                rest.push(m);
            }
        }
        for t in g {
            if !group.contains(t) {
                group.push(t.clone());
            }
        }
        rest.push(group);
        merged = rest;
    }
    merged
}

/// A `take` agent holds records back across fetches, while the input
/// position is one per partition: another agent on the same topic would let
/// a commit pass records the `take` agent still holds. Refused at start.
fn check_take_alone<'a>(agents: impl IntoIterator<Item = (&'a str, &'a str, bool)>) -> Result<()> {
    let mut by_topic: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    for (name, topic, take) in agents {
        by_topic.entry(topic).or_default().push((name, take));
    }
    for (topic, agents) in by_topic {
        if agents.len() > 1 {
            if let Some((taker, _)) = agents.iter().find(|(_, take)| *take) {
                let others: Vec<&str> = agents
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| n != taker)
                    .collect();
                return Err(Error::Config(format!(
                    "agent {taker} uses take() on topic {topic}, which agents {} also read: \
                     a take() agent must be the only agent of its topic",
                    others.join(", ")
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_take_alone, merge_groups};

    #[test]
    fn joins_sharing_a_topic_read_their_topics_in_one_order() {
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let merged = merge_groups(&[g(&["t", "s"]), g(&["a", "b"]), g(&["u", "t"])]);
        assert_eq!(merged, vec![g(&["a", "b"]), g(&["t", "s", "u"])]);
    }

    #[test]
    fn a_take_agent_must_be_alone_on_its_topic() {
        assert!(check_take_alone([("a", "t", true), ("b", "u", false), ("c", "u", false)]).is_ok());
        let err = check_take_alone([("a", "t", false), ("b", "t", true)])
            .expect_err("take beside another agent")
            .to_string();
        assert!(
            err.contains("agent b") && err.contains("topic t") && err.contains("agents a"),
            "{err}"
        );
    }
}
