//! The task record store against a real JetStream KV: compare-and-swap keeps
//! concurrent writers from moving a task backwards or losing updates.

use tern_core::task_store::{Change, TaskStore, Updated, initial_record};
use tern_proto::v1::{Attempt, Task, TaskStatus};
use tern_tests::NatsServer;
use tern_tests::system::test_config;

async fn store(nats: &NatsServer) -> TaskStore {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = tern_core::nats::jetstream(client);
    let topology = tern_core::topology::Topology::ensure(js, &test_config(&nats.url()))
        .await
        .unwrap();
    TaskStore::new(topology.tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_all_applied_once() {
    let nats = NatsServer::start().await;
    let store = store(&nats).await;
    let task = Task {
        id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let revision = store.create(&initial_record(&task)).await.unwrap();
    assert!(
        store.create(&initial_record(&task)).await.is_err(),
        "create is create-if-absent"
    );

    // 20 writers each append one attempt, all starting from the same stale revision.
    let writers = (0..20u32).map(|n| {
        let store = store.clone();
        let id = task.id.clone();
        let known = (initial_record(&task), revision);
        async move {
            store
                .update(&id, Some(known), |r| {
                    r.attempts.push(Attempt {
                        number: n,
                        ..Default::default()
                    });
                    Change::Write
                })
                .await
                .unwrap()
        }
    });
    futures::future::join_all(writers).await;
    let (record, _) = store.get(&task.id).await.unwrap().unwrap();
    let mut numbers: Vec<u32> = record.attempts.iter().map(|a| a.number).collect();
    numbers.sort();
    assert_eq!(
        numbers,
        (0..20).collect::<Vec<_>>(),
        "no update lost, none doubled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_cannot_move_a_finished_task_back() {
    let nats = NatsServer::start().await;
    let store = store(&nats).await;
    let task = Task {
        id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let revision = store.create(&initial_record(&task)).await.unwrap();
    let finished = store
        .update(&task.id, None, |r| {
            r.status = TaskStatus::Succeeded as i32;
            Change::Write
        })
        .await
        .unwrap();
    assert!(matches!(finished, Updated::Written(..)));

    // A writer still believing the task is queued tries to claim it.
    let stale = store
        .update(&task.id, Some((initial_record(&task), revision)), |r| {
            if r.status() == TaskStatus::Queued {
                r.status = TaskStatus::Processing as i32;
                Change::Write
            } else {
                Change::Decline
            }
        })
        .await
        .unwrap();
    assert!(matches!(stale, Updated::Declined(ref r, _) if r.status() == TaskStatus::Succeeded));
    assert!(matches!(
        store
            .update("no-such-task", None, |_| Change::Write)
            .await
            .unwrap(),
        Updated::Missing
    ));
}
