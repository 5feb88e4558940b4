//! One attempt round: the job's targets called in order until one answers 2xx.
//!
//! A webhook has one target; a proxied call over a route has several (a cascade of
//! providers), each possibly called more than once. The retry policy counts rounds,
//! not calls: a round fails only when every target failed, and the next round starts
//! again at the first target.

use std::future::Future;
use std::time::Duration;

use crate::executor::{AttemptOutcome, HttpRequest};
use crate::retry::{Receiver, Verdict};

/// One target of a round.
#[derive(Clone, Debug)]
pub struct Target {
    /// The request to send.
    pub request: HttpRequest,
    /// Extra calls of this target before the round moves on.
    pub retries: u32,
}

/// What a round did: every call in order, and which one succeeded.
#[derive(Debug)]
pub struct Round {
    /// `(url, outcome)` of every call, in order.
    pub calls: Vec<(String, AttemptOutcome)>,
    /// Index into `calls` of the 2xx that ended the round.
    pub winner: Option<usize>,
    /// Each target's last call, in target order (the failure payload lists them).
    pub last_per_target: Vec<usize>,
}

/// Calls `targets` in order through `call` until one answers 2xx. A target that
/// answered with a permanent failure (a 4xx of an upstream) is not called again in
/// this round; the next target is tried.
pub async fn run<'a, F, Fut>(targets: &'a [Target], receiver: Receiver, mut call: F) -> Round
where
    F: FnMut(&'a HttpRequest) -> Fut,
    Fut: Future<Output = AttemptOutcome>,
{
    let mut round = Round {
        calls: Vec::new(),
        winner: None,
        last_per_target: Vec::new(),
    };
    for target in targets {
        for _ in 0..=target.retries {
            let outcome = call(&target.request).await;
            let verdict = Verdict::of(&outcome, receiver);
            round.calls.push((target.request.url.clone(), outcome));
            match verdict {
                Verdict::Success => {
                    round.winner = Some(round.calls.len() - 1);
                    round.last_per_target.push(round.calls.len() - 1);
                    return round;
                }
                Verdict::Permanent(_) => break,
                Verdict::Retryable { .. } => {}
            }
        }
        round.last_per_target.push(round.calls.len() - 1);
    }
    round
}

impl Round {
    /// The round as one verdict: success when a target answered 2xx; permanent when
    /// every target's last answer was permanent; otherwise worth another round.
    pub fn verdict(&self, receiver: Receiver) -> Verdict {
        if self.winner.is_some() {
            return Verdict::Success;
        }
        let verdicts: Vec<(String, Verdict)> = self
            .last_per_target
            .iter()
            .filter_map(|&i| self.calls.get(i))
            .map(|(url, outcome)| (url.clone(), Verdict::of(outcome, receiver)))
            .collect();
        let describe = |reason: &str, url: &str| {
            if verdicts.len() > 1 {
                format!("{url}: {reason}")
            } else {
                reason.to_string()
            }
        };
        let mut reasons = Vec::new();
        let mut all_permanent = !verdicts.is_empty();
        let mut retry_after: Option<Duration> = None;
        for (url, verdict) in &verdicts {
            match verdict {
                Verdict::Success => {}
                Verdict::Permanent(reason) => reasons.push(describe(reason, url)),
                Verdict::Retryable {
                    reason,
                    retry_after: hint,
                } => {
                    all_permanent = false;
                    reasons.push(describe(reason, url));
                    // Several providers asking to wait: the round waits for the longest.
                    retry_after = retry_after.max(*hint);
                }
            }
        }
        let reason = if reasons.is_empty() {
            "no target was called".to_string()
        } else {
            reasons.join("; ")
        };
        if all_permanent {
            Verdict::Permanent(reason)
        } else {
            Verdict::Retryable {
                reason,
                retry_after,
            }
        }
    }

    /// The winning call's outcome, if any.
    pub fn winning(&self) -> Option<&(String, AttemptOutcome)> {
        self.winner.and_then(|i| self.calls.get(i))
    }

    /// Each target's last call, in target order.
    pub fn last_calls(&self) -> impl Iterator<Item = &(String, AttemptOutcome)> {
        self.last_per_target
            .iter()
            .filter_map(|&i| self.calls.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{AttemptResult, BodyLimit};
    use crate::url_guard::FailureKind;
    use std::sync::Mutex;

    fn target(url: &str, retries: u32) -> Target {
        Target {
            request: HttpRequest {
                method: reqwest::Method::POST,
                url: url.to_string(),
                headers: Default::default(),
                body: Default::default(),
                timeout: Duration::from_secs(1),
                keep_body: BodyLimit::Excerpt,
            },
            retries,
        }
    }

    fn answer(status: u16) -> AttemptOutcome {
        AttemptOutcome {
            started_at_ms: 0,
            duration: Duration::ZERO,
            result: AttemptResult::Response {
                status,
                headers: Default::default(),
                body: Default::default(),
            },
        }
    }

    /// Runs a round where each URL answers from its own script, in call order.
    fn scripted(
        targets: &[Target],
        receiver: Receiver,
        script: &[(&str, Vec<Option<u16>>)],
    ) -> (Round, Vec<String>) {
        let script: Mutex<Vec<(String, Vec<Option<u16>>)>> = Mutex::new(
            script
                .iter()
                .map(|(u, s)| (u.to_string(), s.iter().rev().copied().collect()))
                .collect(),
        );
        let called = Mutex::new(Vec::new());
        let round = futures::executor::block_on(run(targets, receiver, |request| {
            called.lock().unwrap().push(request.url.clone());
            let next = script
                .lock()
                .unwrap()
                .iter_mut()
                .find(|(u, _)| *u == request.url)
                .and_then(|(_, s)| s.pop())
                .flatten();
            async move {
                match next {
                    Some(status) => answer(status),
                    None => AttemptOutcome::refused(FailureKind::Connect, "refused"),
                }
            }
        }));
        (round, called.into_inner().unwrap())
    }

    #[test]
    fn first_success_wins_and_later_targets_are_not_called() {
        let targets = [target("a", 0), target("b", 0), target("c", 0)];
        let (round, called) = scripted(
            &targets,
            Receiver::Upstream,
            &[
                ("a", vec![None]),
                ("b", vec![Some(200)]),
                ("c", vec![Some(200)]),
            ],
        );
        assert_eq!(called, ["a", "b"]);
        assert_eq!(round.winning().unwrap().0, "b");
        assert_eq!(round.verdict(Receiver::Upstream), Verdict::Success);
    }

    #[test]
    fn a_target_is_retried_within_the_round_then_the_cascade_moves_on() {
        let targets = [target("a", 2), target("b", 0)];
        let (round, called) = scripted(
            &targets,
            Receiver::Upstream,
            &[
                ("a", vec![Some(500), Some(503), Some(502)]),
                ("b", vec![Some(500)]),
            ],
        );
        assert_eq!(called, ["a", "a", "a", "b"]);
        match round.verdict(Receiver::Upstream) {
            Verdict::Retryable { reason, .. } => {
                assert_eq!(reason, "a: HTTP 502; b: HTTP 500");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_errors_of_an_upstream_are_permanent_only_when_every_target_gave_one() {
        let targets = [target("a", 3), target("b", 0)];
        let (round, called) = scripted(
            &targets,
            Receiver::Upstream,
            &[("a", vec![Some(400)]), ("b", vec![Some(404)])],
        );
        assert_eq!(called, ["a", "b"], "a 4xx is not repeated");
        assert!(matches!(
            round.verdict(Receiver::Upstream),
            Verdict::Permanent(_)
        ));

        let (round, _) = scripted(
            &targets,
            Receiver::Upstream,
            &[("a", vec![Some(400)]), ("b", vec![Some(503)])],
        );
        assert!(matches!(
            round.verdict(Receiver::Upstream),
            Verdict::Retryable { .. }
        ));
        // A webhook receiver's 400 is retried as before.
        let (round, _) = scripted(
            &[target("a", 0)],
            Receiver::Webhook,
            &[("a", vec![Some(400)])],
        );
        assert!(matches!(
            round.verdict(Receiver::Webhook),
            Verdict::Retryable { .. }
        ));
    }
}
