//! `tern-bench`: submits webhook tasks to a running Tern, receives the deliveries on
//! a local receiver, and reports what a user would feel: accepted/s, accept latency,
//! end-to-end delivered/s, delivery latency, and lost or duplicated tasks.

mod receiver;
mod stats;
mod submitter;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::sync::Mutex;

use crate::receiver::Receiver;
use crate::stats::summarize;
use crate::submitter::{Submitter, Target};

/// Benchmark options.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Base URL of the ingress.
    #[arg(long, env = "TERN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key to submit with.
    #[arg(long, env = "TERN_API_KEY")]
    api_key: String,
    /// Tasks to submit.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Size of each task's payload.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Port of the local receiver (0 = any free port).
    #[arg(long, default_value_t = 0)]
    receiver_port: u16,
    /// Target submissions per second (open loop); unlimited when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Fraction of deliveries the receiver fails with a 500 (retries follow).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// The receiver answers each delivery after this many ms (a slow endpoint, so
    /// throughput is bound by deliveries in flight rather than CPU).
    #[arg(long, default_value_t = 0)]
    receiver_delay_ms: u64,
    /// Give up waiting for deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Delayed tasks: the first is due this many ms after the bench starts.
    #[arg(long)]
    delay_start_ms: Option<u64>,
    /// Delayed tasks: due times are spread evenly over this many ms (0 = all at once).
    #[arg(long, default_value_t = 0)]
    delay_spread_ms: u64,
    /// Submit and exit without waiting for deliveries (e.g. to hold many delays).
    #[arg(long)]
    no_wait: bool,
}

/// The `POST /v1/tasks` body of task `i`.
fn task_body(args: &Args, webhook_url: &str, data: &str, start_ms: i64, i: usize) -> bytes::Bytes {
    let mut task = serde_json::json!({
        "queue": "bench",
        "webhook_url": webhook_url,
        "payload": { "data": data },
    });
    if let Some(first) = args.delay_start_ms {
        let offset = args.delay_spread_ms as i64 * i as i64 / args.tasks.max(1) as i64;
        let due = start_ms + first as i64 + offset;
        task["not_before"] = tern_core::task_view::rfc3339(due).into();
        task["payload"]["due_ms"] = due.into();
    }
    serde_json::to_vec(&task).unwrap_or_default().into()
}

/// The part of a `202` the bench reads.
#[derive(serde::Deserialize)]
struct AcceptedBody {
    task_id: String,
}

struct Submitted {
    /// task id → when its request was sent.
    sent: HashMap<String, Instant>,
    accept_latencies: Vec<Duration>,
    rejected: usize,
    first_error: Option<String>,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let receiver = Receiver::start(
        args.receiver_port,
        args.fail_rate,
        Duration::from_millis(args.receiver_delay_ms),
    )?;
    let webhook_url = format!("http://{}/hook", receiver.addr);
    let data = "x".repeat(args.payload_bytes.saturating_sub(12));
    let start_ms = tern_core::now_ms();
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(if args.delay_start_ms.is_some() {
        (0..args.tasks)
            .map(|i| task_body(&args, &webhook_url, &data, start_ms, i))
            .collect()
    } else {
        vec![task_body(&args, &webhook_url, &data, start_ms, 0)]
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;

    println!(
        "tern-bench: {} tasks, {} clients, {} B payloads{}{}{} -> {}",
        args.tasks,
        args.concurrency,
        args.payload_bytes,
        args.rate.map(|r| format!(", {r}/s")).unwrap_or_default(),
        if args.fail_rate > 0.0 {
            format!(", receiver fails {:.0}%", args.fail_rate * 100.0)
        } else {
            String::new()
        },
        if args.receiver_delay_ms > 0 {
            format!(", receiver answers after {} ms", args.receiver_delay_ms)
        } else {
            String::new()
        },
        args.url
    );
    let submitted = Arc::new(Mutex::new(Submitted {
        sent: HashMap::with_capacity(args.tasks),
        accept_latencies: Vec::with_capacity(args.tasks),
        rejected: 0,
        first_error: None,
    }));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let target = Target::new(&args.url, &args.api_key)?;
    let clients: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (bodies, next, submitted) = (bodies.clone(), next.clone(), submitted.clone());
            let mut submitter = Submitter::new(target.clone(), Duration::from_secs(30));
            let (tasks, rate) = (args.tasks, args.rate);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= tasks {
                        break;
                    }
                    if let Some(rate) = rate {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let sent = Instant::now();
                    let result = submitter.submit(bodies[i % bodies.len()].clone()).await;
                    let latency = sent.elapsed();
                    let outcome = match result {
                        Ok((202, body)) => serde_json::from_slice::<AcceptedBody>(&body)
                            .map(|accepted| accepted.task_id)
                            .map_err(|_| "202 without task_id".to_string()),
                        Ok((status, body)) => {
                            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
                        }
                        Err(e) => Err(format!("{e:#}")),
                    };
                    let mut s = submitted.lock().await;
                    match outcome {
                        Ok(id) => {
                            s.sent.insert(id, sent);
                            s.accept_latencies.push(latency);
                        }
                        Err(e) => {
                            s.rejected += 1;
                            s.first_error.get_or_insert(e);
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.context("submitting client panicked")?;
    }
    let submit_elapsed = start.elapsed();
    if args.no_wait {
        let s = submitted.lock().await;
        println!(
            "accepted:          {} ({} rejected) in {:.1} s; not waiting for deliveries",
            s.sent.len(),
            s.rejected,
            submit_elapsed.as_secs_f64()
        );
        return Ok(());
    }

    // Wait for deliveries while they keep coming.
    let accepted = submitted.lock().await.sent.len();
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    loop {
        let count = receiver.with_seen(|s| s.first.len());
        if count >= accepted {
            break;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if args.fail_rate > 0.0 && last_progress.elapsed() > Duration::from_secs(3) {
            // With failures on purpose some tasks end dead: done once all others arrived.
            let s = submitted.lock().await;
            let missing = undelivered(&receiver, &s);
            if count_dead(&client, &args, &missing).await == missing.len() {
                break;
            }
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(args.idle_timeout) {
            println!("no delivery for {} s; stopping the wait", args.idle_timeout);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let late duplicates show up before counting them.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let s = submitted.lock().await;
    let undelivered = undelivered(&receiver, &s);
    // An undelivered task is lost unless its retries ran out (dead).
    let dead = count_dead(&client, &args, &undelivered).await;
    let (mut delivery_latencies, duplicates, last_delivery, attempts_histogram, failed) = receiver
        .with_seen(|seen| {
            let mut latencies = Vec::with_capacity(s.sent.len());
            let mut last = start;
            for (id, sent) in &s.sent {
                if let Some(at) = seen.first.get(id) {
                    latencies.push(at.saturating_duration_since(*sent));
                    last = last.max(*at);
                }
            }
            let mut histogram: std::collections::BTreeMap<u32, usize> = Default::default();
            for n in seen.attempts.values() {
                *histogram.entry(*n).or_default() += 1;
            }
            (latencies, seen.duplicates, last, histogram, seen.failed)
        });
    let mut accept_latencies = s.accept_latencies.clone();
    let accept = summarize(&mut accept_latencies);
    let delivery = summarize(&mut delivery_latencies);
    let e2e_elapsed = last_delivery.saturating_duration_since(start);

    println!("accepted:          {accepted} ({} rejected)", s.rejected);
    if let Some(e) = &s.first_error {
        println!("first rejection:   {e}");
    }
    println!(
        "accepted/s:        {:.0}",
        accepted as f64 / submit_elapsed.as_secs_f64()
    );
    println!(
        "accept latency:    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        accept.p50, accept.p99, accept.max
    );
    println!(
        "delivered/s:       {:.0} (end to end, first submit to last delivery)",
        delivery_latencies.len() as f64 / e2e_elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "delivery latency:  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delivery.p50, delivery.p99, delivery.max
    );
    let lost = undelivered.len() - dead;
    if args.fail_rate > 0.0 {
        println!("dead (retries out): {dead}");
    }
    if args.delay_start_ms.is_some() {
        let (mut lateness, early) = receiver.with_seen(|seen| {
            let early = seen.lateness_ms.iter().filter(|l| **l < 0).count();
            let late: Vec<Duration> = seen
                .lateness_ms
                .iter()
                .map(|l| Duration::from_millis((*l).max(0) as u64))
                .collect();
            (late, early)
        });
        let late = summarize(&mut lateness);
        println!(
            "fire lateness:     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({early} early)",
            late.p50, late.p99, late.max
        );
    }
    println!("lost:              {lost}");
    println!("duplicated:        {duplicates}");
    if args.fail_rate > 0.0 {
        println!("failed on purpose: {failed}");
        let histogram: Vec<String> = attempts_histogram
            .iter()
            .map(|(attempts, tasks)| format!("{attempts}: {tasks}"))
            .collect();
        println!("attempts per task: {}", histogram.join(", "));
    }
    if lost > 0 || s.rejected > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Accepted tasks the receiver has not (yet) seen succeed.
fn undelivered(receiver: &Receiver, submitted: &Submitted) -> Vec<String> {
    receiver.with_seen(|seen| {
        submitted
            .sent
            .keys()
            .filter(|id| !seen.first.contains_key(*id))
            .cloned()
            .collect()
    })
}

/// How many of `ids` the status API reports `dead`.
async fn count_dead(client: &reqwest::Client, args: &Args, ids: &[String]) -> usize {
    let mut dead = 0;
    for id in ids {
        let response = client
            .get(format!("{}/v1/tasks/{id}", args.url.trim_end_matches('/')))
            .bearer_auth(&args.api_key)
            .send()
            .await;
        let body = match response {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        if body.is_some_and(|b| b["status"] == "dead") {
            dead += 1;
        }
    }
    dead
}
