//! Joined inputs in timestamp order: which input of a task a join reads
//! next, and when it must wait for one to be fetched (Kafka Streams'
//! `PartitionGroup`, with `max.task.idle.ms` as KIP-695 defines it).
//!
//! A task that joins two topics holds what it fetched of each and always
//! processes the record with the smallest timestamp first (on a tie, the
//! input declared first). When one input has nothing buffered, the task
//! waits for it while the consumer knows (or does not know yet) that it has
//! records on the broker, so that a replay of the same input makes the same
//! joins as the live run did. An input that is known to be caught up is
//! waited for `max.task.idle.ms` more (0 by default: not at all); with `-1`
//! the task never waits.
//!
//! Pure: the dispatcher feeds it heads, lags and the clock.

use std::time::{Duration, Instant};

/// `max.task.idle.ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskIdle {
    /// `-1`: never wait for an empty input (records may be processed out of
    /// timestamp order).
    Disabled,
    /// Wait for inputs with records on the broker; then for caught-up ones
    /// this long.
    Wait(Duration),
}

impl TaskIdle {
    /// From the property's value (ms; `-1` disables waiting).
    pub(crate) fn from_ms(ms: i64) -> Self {
        if ms < 0 {
            Self::Disabled
        } else {
            Self::Wait(Duration::from_millis(ms.unsigned_abs()))
        }
    }
}

/// What the task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Process records of `input` from the head while each stays before
    /// `bound` (see [`run_len`]); at least the head.
    Run {
        /// Which input.
        input: usize,
        /// The (timestamp, input) of the earliest head of the other inputs.
        bound: Option<(i64, usize)>,
    },
    /// An empty input may still get records that come first: wait for it.
    Wait,
    /// Nothing is buffered.
    Idle,
}

/// Chooses what to process next. `heads[i]` is the timestamp of input
/// `i`'s first buffered record (`None`: nothing buffered); `lags[i]` what
/// the consumer knows of the records past it on the broker (`None`: not
/// known yet). `deadlines` keeps, per input, when waiting for a caught-up
/// input ends; it is updated here.
pub(crate) fn choose(
    heads: &[Option<i64>],
    lags: &[Option<i64>],
    idle: TaskIdle,
    deadlines: &mut [Option<Instant>],
    now: Instant,
) -> Choice {
    let Some((first, _)) = heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.map(|ts| (i, ts)))
        .min_by_key(|&(i, ts)| (ts, i))
    else {
        return Choice::Idle;
    };
    if let TaskIdle::Wait(max_idle) = idle {
        for (i, head) in heads.iter().enumerate() {
            if head.is_some() {
                deadlines[i] = None;
                continue;
            }
            match lags.get(i).copied().flatten() {
                // Records on the broker, or not known yet: they may come
                // first.
                None | Some(1..) => {
                    deadlines[i] = None;
                    return Choice::Wait;
                }
                Some(_) => {
                    let deadline = *deadlines[i].get_or_insert(now + max_idle);
                    if now < deadline {
                        return Choice::Wait;
                    }
                }
            }
        }
    }
    let bound = heads
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != first)
        .filter_map(|(i, h)| h.map(|ts| (ts, i)))
        .min();
    Choice::Run {
        input: first,
        bound,
    }
}

/// How many of `input`'s buffered records (their timestamps, oldest offset
/// first) come before `bound`: the head always does; each next one while
/// its timestamp is smaller (or equal, for an input declared before the
/// bound's).
pub(crate) fn run_len(
    timestamps: impl IntoIterator<Item = i64>,
    input: usize,
    bound: Option<(i64, usize)>,
) -> usize {
    let mut n = 0;
    for ts in timestamps {
        if n > 0 && bound.is_some_and(|b| (ts, input) > b) {
            break;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ZERO: TaskIdle = TaskIdle::Wait(Duration::ZERO);

    fn pick(heads: &[Option<i64>], lags: &[Option<i64>], idle: TaskIdle) -> Choice {
        let mut deadlines = vec![None; heads.len()];
        choose(heads, lags, idle, &mut deadlines, Instant::now())
    }

    #[test]
    fn the_earliest_head_goes_first_and_ties_go_to_the_input_declared_first() {
        let lags = [Some(0), Some(0)];
        assert_eq!(
            pick(&[Some(5), Some(3)], &lags, ZERO),
            Choice::Run {
                input: 1,
                bound: Some((5, 0))
            }
        );
        assert_eq!(
            pick(&[Some(4), Some(4)], &lags, ZERO),
            Choice::Run {
                input: 0,
                bound: Some((4, 1))
            }
        );
        assert_eq!(pick(&[None, None], &lags, ZERO), Choice::Idle);
    }

    #[test]
    fn an_empty_input_with_records_on_the_broker_or_an_unknown_lag_is_waited_for() {
        assert_eq!(
            pick(&[Some(1), None], &[Some(0), Some(3)], ZERO),
            Choice::Wait
        );
        assert_eq!(pick(&[Some(1), None], &[Some(0), None], ZERO), Choice::Wait);
        // Caught up: nothing to wait for.
        assert_eq!(
            pick(&[Some(1), None], &[Some(0), Some(0)], ZERO),
            Choice::Run {
                input: 0,
                bound: None
            }
        );
        // -1: never waits.
        assert_eq!(
            pick(&[Some(1), None], &[Some(0), None], TaskIdle::Disabled),
            Choice::Run {
                input: 0,
                bound: None
            }
        );
    }

    #[test]
    fn a_caught_up_input_is_waited_for_max_task_idle_ms_from_when_it_was_first_found_empty() {
        let idle = TaskIdle::Wait(Duration::from_millis(100));
        let t0 = Instant::now();
        let mut deadlines = vec![None, None];
        let heads = [Some(1), None];
        let lags = [Some(0), Some(0)];
        assert_eq!(
            choose(&heads, &lags, idle, &mut deadlines, t0),
            Choice::Wait
        );
        let later = t0 + Duration::from_millis(99);
        assert_eq!(
            choose(&heads, &lags, idle, &mut deadlines, later),
            Choice::Wait
        );
        let due = t0 + Duration::from_millis(100);
        assert!(matches!(
            choose(&heads, &lags, idle, &mut deadlines, due),
            Choice::Run { input: 0, .. }
        ));
        // Records arrived: the next time it is empty, the wait starts over.
        let _ = choose(&[Some(1), Some(2)], &lags, idle, &mut deadlines, due);
        assert_eq!(deadlines[1], None);
        assert_eq!(
            choose(&heads, &lags, idle, &mut deadlines, due),
            Choice::Wait
        );
    }

    #[test]
    fn a_run_stops_before_the_first_record_that_comes_after_the_bound() {
        assert_eq!(run_len([1, 2, 5, 6], 0, Some((5, 1))), 3);
        assert_eq!(run_len([1, 2, 5, 6], 1, Some((5, 0))), 2);
        assert_eq!(run_len([1, 2, 5, 6], 0, None), 4);
        // Out of order: the run ends at the late-stamped record.
        assert_eq!(run_len([1, 9, 2], 0, Some((5, 1))), 1);
    }

    /// Merges inputs to the end, every input caught up.
    fn merge(inputs: &[Vec<i64>]) -> Vec<(usize, usize)> {
        let mut pos = vec![0usize; inputs.len()];
        let lags = vec![Some(0); inputs.len()];
        let mut deadlines = vec![None; inputs.len()];
        let mut out = Vec::new();
        loop {
            let heads: Vec<Option<i64>> = inputs
                .iter()
                .zip(&pos)
                .map(|(v, &p)| v.get(p).copied())
                .collect();
            match choose(&heads, &lags, ZERO, &mut deadlines, Instant::now()) {
                Choice::Idle => return out,
                Choice::Wait => panic!("waited with every input caught up"),
                Choice::Run { input, bound } => {
                    let n = run_len(inputs[input][pos[input]..].iter().copied(), input, bound);
                    assert!(n >= 1);
                    for k in 0..n {
                        out.push((input, pos[input] + k));
                    }
                    pos[input] += n;
                }
            }
        }
    }

    proptest! {
        /// Inputs in timestamp order each come out as one sequence sorted
        /// by (timestamp, input), each input's records in their order.
        #[test]
        fn ordered_inputs_merge_into_timestamp_order(
            mut inputs in prop::collection::vec(prop::collection::vec(0i64..50, 0..30), 1..4)
        ) {
            for v in &mut inputs {
                v.sort_unstable();
            }
            let out = merge(&inputs);
            let mut expected: Vec<(i64, usize, usize)> = inputs
                .iter()
                .enumerate()
                .flat_map(|(i, v)| v.iter().enumerate().map(move |(k, &ts)| (ts, i, k)))
                .collect();
            expected.sort_unstable();
            let expected: Vec<(usize, usize)> = expected.into_iter().map(|(_, i, k)| (i, k)).collect();
            prop_assert_eq!(out, expected);
        }

        /// Out-of-order inputs lose nothing and keep each input's order.
        #[test]
        fn any_inputs_come_out_whole_and_each_in_its_own_order(
            inputs in prop::collection::vec(prop::collection::vec(-5i64..50, 0..30), 1..4)
        ) {
            let out = merge(&inputs);
            prop_assert_eq!(out.len(), inputs.iter().map(Vec::len).sum::<usize>());
            for (i, v) in inputs.iter().enumerate() {
                let seen: Vec<usize> = out.iter().filter(|(j, _)| *j == i).map(|(_, k)| *k).collect();
                prop_assert_eq!(seen, (0..v.len()).collect::<Vec<_>>());
            }
        }
    }
}
