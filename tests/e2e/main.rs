//! Tern end to end: real nats-server processes, the services in-process or as
//! processes, loopback receivers. One module per area; `make test` runs them with
//! nextest, each test in a process of its own.

mod api_input;
mod callbacks;
mod delays;
mod dlq;
mod failures;
mod fairness;
mod idempotency;
mod limits;
mod notifications;
mod observability;
mod openapi;
mod operations;
mod proxy;
mod raw_bodies;
mod retries;
mod schedules;
mod task_store;
mod ternctl;
mod trace_context;
mod webhook_delivery;
