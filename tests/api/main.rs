//! herd's one integration test binary (matklad's "Delete Cargo Integration Tests"): every
//! module here runs against the real server on a real port, once on SQLite and once on
//! PostgreSQL when `HERD_TEST_DATABASE_URL` is set (see `helpers::engine_tests!`).
// Test and example code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod helpers;
mod invariants;

mod auth;
mod backup;
mod blobs;
mod certificates;
mod cli;
mod commands;
mod connections;
mod console;
mod console_access;
mod console_alerts;
mod console_device;
mod console_updates;
mod devices;
mod edge;
mod events;
mod hardening;
mod monitoring;
mod openapi;
mod packages;
mod presence;
mod registration;
mod rollouts;
mod schema;
mod scrape;
mod settings;
mod telemetry;
mod tenants;
mod webhooks;
