//! Failure tests with real processes: every accepted task must end in the right
//! terminal state whatever dies underneath. Each test sends a known number of tasks,
//! then counts what the receiver saw and what the status API says.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tern_tests::load::{self, Accepted};
use tern_tests::process::ProcessSystem;
use tern_tests::system::ACME;
use tern_tests::{NatsCluster, NatsServer, Receiver, wait_until};

/// Submits `count` webhook tasks to `url` from 4 clients in the background.
fn submit_in_background(
    api_url: &str,
    url: &str,
    count: usize,
    accepted: &Accepted,
) -> tokio::task::JoinHandle<()> {
    let (api_url, url, accepted) = (api_url.to_string(), url.to_string(), accepted.clone());
    tokio::spawn(async move {
        load::submit_all(
            &api_url,
            ACME.api_key,
            count,
            4,
            move |i| load::webhook(&url, i),
            accepted,
            Duration::from_secs(120),
        )
        .await
    })
}

/// Submits `count` tasks to a slow `receiver` and waits until it holds `in_flight`.
async fn submit_until_in_flight(
    api_url: &str,
    receiver: &Receiver,
    count: usize,
    in_flight: usize,
) -> Accepted {
    let accepted: Accepted = Default::default();
    let url = receiver.url("/hook");
    load::submit_all(
        api_url,
        ACME.api_key,
        count,
        32,
        move |i| load::webhook(&url, i),
        accepted.clone(),
        Duration::from_secs(60),
    )
    .await;
    wait_until(
        &format!("{in_flight} deliveries in flight"),
        Duration::from_secs(60),
        || async { (receiver.in_flight() >= in_flight).then_some(()) },
    )
    .await;
    accepted
}

/// Every accepted task succeeded, and the receiver saw each of them.
async fn assert_all_delivered(
    api_url: &str,
    accepted: &Accepted,
    count: usize,
    receiver: &Receiver,
) {
    let ids = ids(&*accepted.lock().await);
    assert_eq!(ids.len(), count);
    load::wait_all_status(
        api_url,
        ACME.api_key,
        &ids,
        "succeeded",
        Duration::from_secs(120),
    )
    .await;
    let seen = receiver.distinct_ids();
    for id in &ids {
        assert!(seen.contains(id), "task {id} was never delivered");
    }
}

fn ids(accepted: &std::collections::HashMap<usize, String>) -> Vec<String> {
    accepted.values().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_with_a_thousand_deliveries_in_flight_loses_nothing() {
    const TASKS: usize = 1500;
    let nats = NatsServer::start().await;
    // Every delivery is held for 2 s, so the worker has them all in flight at once.
    let receiver = Receiver::start_slow(Duration::from_secs(2)).await;
    let mut system = ProcessSystem::start(
        &nats.url(),
        &[],
        &[("TERN_WORKER__CONCURRENCY", TASKS.to_string())],
    )
    .await;
    let accepted = submit_until_in_flight(&system.api_url, &receiver, TASKS, 1000).await;

    system.restart_worker().await;

    assert_all_delivered(&system.api_url, &accepted, TASKS, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_mid_run_loses_nothing_and_services_reconnect() {
    const TASKS: usize = 600;
    let mut nats = NatsServer::start().await;
    let receiver = Receiver::start().await;
    let system = ProcessSystem::start(&nats.url(), &[], &[]).await;
    let accepted: Accepted = Default::default();
    let submitting =
        submit_in_background(&system.api_url, &receiver.url("/hook"), TASKS, &accepted);
    wait_until(
        "a third of the tasks accepted",
        Duration::from_secs(60),
        || async { (accepted.lock().await.len() >= TASKS / 3).then_some(()) },
    )
    .await;

    nats.restart().await;

    submitting.await.expect("submissions");
    assert_all_delivered(&system.api_url, &accepted, TASKS, &receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_node_of_a_three_node_cluster_loses_nothing() {
    const TASKS: usize = 600;
    let mut cluster = NatsCluster::start().await;
    let receiver = Receiver::start().await;
    let system = ProcessSystem::start(
        &cluster.url(),
        &[("TERN_NATS__REPLICAS", "3".to_string())],
        &[],
    )
    .await;
    let accepted: Accepted = Default::default();
    let submitting =
        submit_in_background(&system.api_url, &receiver.url("/hook"), TASKS, &accepted);
    wait_until(
        "a third of the tasks accepted",
        Duration::from_secs(60),
        || async { (accepted.lock().await.len() >= TASKS / 3).then_some(()) },
    )
    .await;

    cluster.nodes[1].kill();

    submitting.await.expect("submissions");
    assert_all_delivered(&system.api_url, &accepted, TASKS, &receiver).await;
}

/// A raw-TCP receiver that fails 30% of requests: 500s, timeouts and dropped
/// connections. Its decision is a pure function of (task id, attempt number), so
/// the test knows exactly which tasks must succeed, after how many attempts.
mod faulty {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What the receiver does with one attempt.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        /// 200.
        None,
        /// 500.
        ServerError,
        /// Answers only after the sender's timeout.
        Slow,
        /// Reads the request and closes the connection.
        Drop,
    }

    /// The decision for attempt `attempt` of task `id`.
    pub fn decide(id: &str, attempt: u64) -> Fault {
        // FNV-1a: stable and spread well enough for a 30% split.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes().chain(attempt.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        match h % 10 {
            7 => Fault::ServerError,
            8 => Fault::Slow,
            9 => Fault::Drop,
            _ => Fault::None,
        }
    }

    /// Starts the receiver; returns its URL and the (id, attempt) pairs it saw.
    pub async fn start() -> (String, Arc<Mutex<Vec<(String, u64)>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone()));
            }
        });
        (url, seen)
    }

    async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Vec<(String, u64)>>>) {
        let mut buffer = Vec::new();
        loop {
            // Read one request: headers, then Content-Length bytes of body.
            let header_end = loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buffer.len() < header_end + length {
                let mut chunk = [0u8; 8192];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            let body: serde_json::Value =
                serde_json::from_slice(&buffer[header_end..header_end + length])
                    .unwrap_or_default();
            buffer.drain(..header_end + length);
            let id = body["task_id"].as_str().unwrap_or_default().to_string();
            let attempt = body["attempt"].as_u64().unwrap_or(0);
            seen.lock().expect("lock").push((id.clone(), attempt));
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            match decide(&id, attempt) {
                Fault::None => {
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
                Fault::ServerError => {
                    let response =
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops";
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                }
                Fault::Slow => {
                    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                    let _ = stream.write_all(ok).await;
                    return;
                }
                Fault::Drop => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_30_percent_ends_every_task_as_its_policy_dictates() {
    const TASKS: usize = 300;
    const MAX_RETRIES: u64 = 2;
    let nats = NatsServer::start().await;
    let (url, seen) = faulty::start().await;
    let system = ProcessSystem::start(&nats.url(), &[], &[]).await;
    let accepted: Accepted = Default::default();
    load::submit_all(
        &system.api_url,
        ACME.api_key,
        TASKS,
        16,
        move |i| {
            serde_json::json!({
                "queue": "flaky", "webhook_url": url, "payload": {"i": i},
                "retry": {"max_retries": MAX_RETRIES, "backoff": "fixed", "initial_delay": "100ms", "timeout": "500ms"}
            })
        },
        accepted.clone(),
        Duration::from_secs(60),
    )
    .await;
    let ids = ids(&*accepted.lock().await);
    let client = tern_tests::http();
    let (mut succeeded, mut dead) = (0, 0);
    for id in &ids {
        // What the policy dictates: the first clean attempt within 1 + MAX_RETRIES wins.
        let first_ok =
            (1..=MAX_RETRIES + 1).find(|a| faulty::decide(id, *a) == faulty::Fault::None);
        let (status, attempts) = match first_ok {
            Some(a) => ("succeeded", a),
            None => ("dead", MAX_RETRIES + 1),
        };
        let task = wait_until(
            &format!("task {id} to become {status}"),
            Duration::from_secs(60),
            || {
                let client = client.clone();
                let api_url = system.api_url.clone();
                async move {
                    let task = load::fetch_task(&client, &api_url, ACME.api_key, id).await?;
                    let s = task["status"].as_str()?;
                    (s == "succeeded" || s == "dead").then_some(task)
                }
            },
        )
        .await;
        assert_eq!(task["status"], status, "{task}");
        let recorded = task["attempts"].as_array().unwrap();
        assert_eq!(recorded.len() as u64, attempts, "{task}");
        for (n, attempt) in recorded.iter().enumerate() {
            match faulty::decide(id, n as u64 + 1) {
                faulty::Fault::ServerError => assert_eq!(attempt["status_code"], 500, "{task}"),
                faulty::Fault::Slow => assert_eq!(attempt["error"], "timeout", "{task}"),
                faulty::Fault::Drop => assert!(attempt["error"].is_string(), "{task}"),
                faulty::Fault::None => assert_eq!(attempt["status_code"], 200, "{task}"),
            }
        }
        if status == "succeeded" {
            succeeded += 1;
        } else {
            dead += 1;
        }
    }
    // The receiver saw every attempt of every task.
    let seen: HashSet<(String, u64)> = seen.lock().unwrap().iter().cloned().collect();
    for id in &ids {
        assert!(
            seen.contains(&(id.clone(), 1)),
            "task {id}: first attempt never arrived"
        );
    }
    assert!(
        succeeded > 0 && dead > 0,
        "both outcomes occur: {succeeded} succeeded, {dead} dead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries_and_hands_back_the_rest() {
    const TASKS: usize = 800;
    // Each delivery takes 1 s, well inside the 5 s grace of the test configuration.
    const DELIVERY: Duration = Duration::from_secs(1);
    let nats = NatsServer::start().await;
    let receiver = Receiver::start_slow(DELIVERY).await;
    let mut system = ProcessSystem::start(
        &nats.url(),
        &[],
        &[("TERN_WORKER__CONCURRENCY", "500".to_string())],
    )
    .await;
    let accepted = submit_until_in_flight(&system.api_url, &receiver, TASKS, 500).await;

    let started = Instant::now();
    let clean = system.worker.terminate(Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert!(
        clean,
        "the worker exits cleanly on SIGTERM:\n{}",
        system.worker.log()
    );
    // As soon as the calls in flight are done (the 5 s grace is not waited out), with
    // a margin for a loaded machine.
    assert!(
        took < DELIVERY + Duration::from_secs(2),
        "exit once the calls finished, well within the grace period: took {took:?}"
    );
    // The deliveries in flight were allowed to finish, none was cut off.
    assert_eq!(receiver.in_flight(), 0);

    system.worker = system
        .processes
        .start(tern_tests::process::Service::Worker, &[])
        .await;
    assert_all_delivered(&system.api_url, &accepted, TASKS, &receiver).await;
    // Finished deliveries were acknowledged, the rest handed back: nothing twice.
    assert_eq!(receiver.count(), TASKS, "no task was delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_hands_in_flight_deliveries_back_for_prompt_redelivery() {
    const TASKS: usize = 700;
    const IN_FLIGHT: usize = 500;
    const GRACE: Duration = Duration::from_secs(2);
    // Long enough to tell the two apart: a handed-back (nak'd) message is redelivered
    // at once, one the worker just dropped only after the ack wait.
    const ACK_WAIT: Duration = Duration::from_secs(30);
    let nats = NatsServer::start().await;
    // Holds every request until released, so no delivery can finish within the grace.
    let (receiver, release) = Receiver::start_holding().await;
    let mut system = ProcessSystem::start(
        &nats.url(),
        &[("TERN_WORKER__ACK_WAIT", format!("{}s", ACK_WAIT.as_secs()))],
        &[
            ("TERN_WORKER__CONCURRENCY", IN_FLIGHT.to_string()),
            (
                "TERN_WORKER__SHUTDOWN_GRACE",
                format!("{}s", GRACE.as_secs()),
            ),
        ],
    )
    .await;
    let accepted = submit_until_in_flight(&system.api_url, &receiver, TASKS, IN_FLIGHT).await;
    let cut_off = receiver.distinct_ids();
    assert_eq!(
        cut_off.len(),
        IN_FLIGHT,
        "one call per permit, none finished"
    );

    let started = Instant::now();
    let clean = system.worker.terminate(Duration::from_secs(20)).await;
    let took = started.elapsed();
    let log = system.worker.log();
    assert!(clean, "the worker exits cleanly on SIGTERM:\n{log}");
    assert!(
        took >= GRACE && took < GRACE + Duration::from_secs(2),
        "the calls get the whole grace period and not much more: took {took:?}"
    );
    assert!(
        log.contains("grace period over"),
        "the grace ran out with calls in flight:\n{log}"
    );
    assert_eq!(receiver.count(), IN_FLIGHT, "no call starts after SIGTERM");
    wait_until(
        "the cut-off calls to be closed",
        Duration::from_secs(10),
        || async { (receiver.in_flight() == 0).then_some(()) },
    )
    .await;

    release.cancel();
    let restarted = Instant::now();
    system.worker = system
        .processes
        .start(tern_tests::process::Service::Worker, &[])
        .await;
    assert_all_delivered(&system.api_url, &accepted, TASKS, &receiver).await;

    // Everything came promptly after the restart: the cut-off calls and the messages
    // the worker held but never started were handed back, none waited out the ack wait.
    let requests = receiver.requests();
    let late: Vec<_> = requests
        .iter()
        .filter(|r| r.at.saturating_duration_since(restarted) >= ACK_WAIT / 3)
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert!(
        late.is_empty(),
        "{} deliveries waited out the ack wait ({} of them cut off), e.g. {:?}",
        late.len(),
        late.iter().filter(|id| cut_off.contains(**id)).count(),
        &late[..late.len().min(3)]
    );
    // Only the calls already sent are repeated, each once.
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    for request in &requests {
        *seen
            .entry(request.header("webhook-id").expect("webhook-id"))
            .or_default() += 1;
    }
    for (id, times) in &seen {
        let expected = if cut_off.contains(*id) { 2 } else { 1 };
        assert_eq!(*times, expected, "task {id}");
    }
    assert!(requests.len() <= TASKS + IN_FLIGHT);
}

/// How a submission ended while the ingress shut down.
#[derive(Debug)]
enum Submitted {
    /// 202 with this task id.
    Accepted(String),
    /// No connection, or it was closed or reset before an answer: nothing was done
    /// that the client was not told of (the INTAKE count below checks that).
    Refused,
    /// Anything else (another status, a timeout): not a clean shutdown.
    Unclean(String),
}

fn submitted(result: Result<(u16, serde_json::Value), reqwest::Error>) -> Submitted {
    match result {
        Ok((202, body)) => match body["task_id"].as_str() {
            Some(id) => Submitted::Accepted(id.to_string()),
            None => Submitted::Unclean(format!("202 without a task id: {body}")),
        },
        Ok((status, body)) => Submitted::Unclean(format!("{status}: {body}")),
        Err(e) if e.is_timeout() => Submitted::Unclean(format!("timed out: {e:?}")),
        Err(e) if e.is_connect() => Submitted::Refused,
        Err(e) => {
            let mut chain = format!("{e:?}");
            let mut source = std::error::Error::source(&e);
            while let Some(inner) = source {
                chain.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            let closed = [
                "connection closed",
                "reset",
                "broken pipe",
                "IncompleteMessage",
            ];
            if closed.iter().any(|c| chain.contains(c)) {
                Submitted::Refused
            } else {
                Submitted::Unclean(chain)
            }
        }
    }
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<(Instant, Instant, Submitted)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_ingress_every_202_is_delivered_the_rest_fail_cleanly() {
    const CLIENTS: usize = 16;
    const GRACE: Duration = Duration::from_secs(3);
    let nats = NatsServer::start().await;
    let receiver = Receiver::start().await;
    // Holds a synchronous proxied call past the grace: the drain must not wait for it.
    let (upstream, _release) = Receiver::start_holding().await;
    let mut system = ProcessSystem::start(
        &nats.url(),
        &[(
            "TERN_INGRESS__SHUTDOWN_GRACE",
            format!("{}s", GRACE.as_secs()),
        )],
        &[],
    )
    .await;

    // Each submission: when it started, when it ended, how.
    let log: Log = Default::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (log, stop, next) = (log.clone(), stop.clone(), next.clone());
            let (url, hook) = (
                format!("{}/v1/tasks", system.api_url),
                receiver.url("/hook"),
            );
            tokio::spawn(async move {
                let client = tern_tests::http();
                while !stop.is_cancelled() {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let started = Instant::now();
                    let result = async {
                        let response = client
                            .post(&url)
                            .bearer_auth(ACME.api_key)
                            .header("idempotency-key", format!("drain-{i}"))
                            .timeout(Duration::from_secs(10))
                            .json(&load::webhook(&hook, i))
                            .send()
                            .await?;
                        let status = response.status().as_u16();
                        Ok((status, response.json().await.unwrap_or_default()))
                    }
                    .await;
                    let outcome = submitted(result);
                    log.lock()
                        .expect("log")
                        .push((started, Instant::now(), outcome));
                    // Once the port is closed, try again now and then rather than spin.
                    if matches!(
                        log.lock().expect("log").last(),
                        Some((_, _, Submitted::Refused))
                    ) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let held = tokio::spawn(
        tern_tests::http()
            .post(format!("{}/v1/proxy", system.api_url))
            .bearer_auth(ACME.api_key)
            .header("X-Target-URL", upstream.url("/slow"))
            .timeout(Duration::from_secs(60))
            .body("{}")
            .send(),
    );
    let accepted = || {
        log.lock()
            .expect("log")
            .iter()
            .filter(|(_, _, s)| matches!(s, Submitted::Accepted(_)))
            .count()
    };
    wait_until(
        "submissions flowing and the proxied call held",
        Duration::from_secs(60),
        || async { (accepted() >= 300 && upstream.in_flight() == 1).then_some(()) },
    )
    .await;

    let sigterm = Instant::now();
    let clean = system
        .ingress
        .terminate(GRACE + Duration::from_secs(10))
        .await;
    let exited = Instant::now();
    let took = exited - sigterm;
    assert!(
        clean,
        "the ingress exits cleanly on SIGTERM:\n{}",
        system.ingress.log()
    );
    assert!(
        took >= GRACE && took < GRACE + Duration::from_secs(2),
        "the held call gets the grace period and not much more: took {took:?}"
    );
    wait_until(
        "a submission refused after the exit",
        Duration::from_secs(10),
        || async {
            log.lock()
                .expect("log")
                .iter()
                .any(|(started, _, s)| *started > exited && matches!(s, Submitted::Refused))
                .then_some(())
        },
    )
    .await;
    stop.cancel();
    for client in clients {
        client.await.expect("client");
    }
    let held = held.await.expect("held call");
    assert!(
        matches!(
            submitted(held.map(|r| (r.status().as_u16(), serde_json::Value::Null))),
            Submitted::Refused
        ),
        "the call held past the grace is closed, not answered"
    );

    let log = std::mem::take(&mut *log.lock().expect("log"));
    let mut ids = Vec::new();
    let (mut drained, mut refused) = (0, 0);
    for (started, ended, outcome) in &log {
        match outcome {
            Submitted::Accepted(id) => {
                ids.push(id.clone());
                if *started < sigterm && *ended > sigterm {
                    drained += 1;
                }
            }
            Submitted::Refused => refused += 1,
            Submitted::Unclean(why) => panic!("a submission failed uncleanly: {why}"),
        }
    }
    assert!(drained > 0, "requests in flight at SIGTERM were answered");
    assert!(refused > 0);
    // Every 202 is a task that is delivered.
    let expected: HashSet<String> = ids.iter().cloned().collect();
    wait_until(
        "every accepted task delivered",
        Duration::from_secs(60),
        || async { expected.is_subset(&receiver.distinct_ids()).then_some(()) },
    )
    .await;
    // And no task was created for a client that was not told: a request cut off
    // after its publish would have one message more on INTAKE than 202s.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let mut intake = js.get_stream("TERN_INTAKE").await.expect("intake");
    let published = intake
        .info()
        .await
        .expect("intake info")
        .state
        .last_sequence;
    assert_eq!(published, ids.len() as u64);
}

/// With `ingress.shutdown_delay`, a SIGTERM'd ingress fails `/readyz` at once but goes
/// on accepting for the delay (what a load balancer still sends while the endpoint's
/// removal reaches it); then it closes its port and exits, and every 202 is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_shutdown_delay_fails_readiness_first_and_serves_through_the_delay() {
    const DELAY: Duration = Duration::from_secs(2);
    let nats = NatsServer::start().await;
    let receiver = Receiver::start().await;
    let mut system = ProcessSystem::start(
        &nats.url(),
        &[(
            "TERN_INGRESS__SHUTDOWN_DELAY",
            format!("{}s", DELAY.as_secs()),
        )],
        &[],
    )
    .await;
    let readyz = format!("http://127.0.0.1:{}/readyz", system.ingress.ops_port);
    let tasks = format!("{}/v1/tasks", system.api_url);
    let hook = receiver.url("/hook");
    let client = tern_tests::http();
    let status = client.get(&readyz).send().await.expect("readyz").status();
    assert_eq!(status, 200, "ready before the signal");

    let sigterm = Instant::now();
    let probe = async {
        wait_until("/readyz failing", Duration::from_secs(5), || async {
            match client.get(&readyz).send().await {
                Ok(r) if r.status() == 503 => Some(()),
                _ => None,
            }
        })
        .await;
        // Not ready, yet still serving: submit at a steady pace until the port closes.
        let mut accepted: Vec<(Instant, String)> = Vec::new();
        let mut pace = tokio::time::interval(Duration::from_millis(50));
        for i in 0.. {
            pace.tick().await;
            let response = client
                .post(&tasks)
                .bearer_auth(ACME.api_key)
                .timeout(Duration::from_secs(5))
                .json(&load::webhook(&hook, i))
                .send()
                .await;
            let Ok(response) = response else { break };
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_eq!(status, 202, "while the delay lasts: {body}");
            let id = body["task_id"].as_str().expect("task_id").to_string();
            accepted.push((Instant::now(), id));
        }
        accepted
    };
    let (clean, accepted) = tokio::join!(
        system.ingress.terminate(DELAY + Duration::from_secs(15)),
        probe
    );
    let took = sigterm.elapsed();
    assert!(
        clean,
        "the ingress exits cleanly on SIGTERM:\n{}",
        system.ingress.log()
    );
    assert!(
        took >= DELAY,
        "it served through the delay: exited after {took:?}"
    );
    let last = accepted.last().map(|(at, _)| *at - sigterm);
    assert!(
        last.is_some_and(|last| last >= DELAY / 2),
        "tasks are accepted well into the delay, after readiness failed: last 202 at {last:?}"
    );
    let refused = client.post(&tasks).bearer_auth(ACME.api_key).send().await;
    assert!(refused.is_err(), "the port is closed after the exit");

    let expected: HashSet<String> = accepted.into_iter().map(|(_, id)| id).collect();
    wait_until(
        "every task accepted during the delay delivered",
        Duration::from_secs(30),
        || async { expected.is_subset(&receiver.distinct_ids()).then_some(()) },
    )
    .await;
}
