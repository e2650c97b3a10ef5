//! `GET /metrics` as scrapers and dashboards use it: the format follows `Accept`, the classic
//! text names each counter's `_total` family, the operator's figures (pools, jobs, the outbox,
//! expiring certificates) are there, and the shipped Grafana dashboard graphs only names herd
//! serves. `promtool check metrics` runs over a real scrape in `.ci/checks`.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{engine_tests, expect_json, Engine, TestApp, ADMIN_TOKEN};

async fn scrape(app: &TestApp, accept: &str) -> (String, String) {
    let response = app
        .client
        .get(format!("http://{}/metrics", app.address))
        .header("accept", accept)
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    (content_type, response.text().await.unwrap())
}

/// The value of the sample line that starts with `series` (name and labels, exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
}

/// The families a classic scrape declares (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

engine_tests! {
    async fn the_format_follows_accept(app) {
        let (content_type, classic) = scrape(&app, "text/plain;version=0.0.4").await;
        assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
        assert!(classic.contains("# TYPE herd_http_requests_total counter"), "{classic}");
        assert!(classic.contains("# HELP herd_http_requests_total "), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");

        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (content_type, openmetrics) = scrape(&app, prometheus).await;
        assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
        assert!(openmetrics.contains("# TYPE herd_http_requests counter"), "{openmetrics}");
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");

        let (content_type, _) = scrape(&app, "*/*").await;
        assert!(content_type.starts_with("text/plain"), "{content_type}");
    }

    async fn the_scrape_covers_pools_jobs_the_outbox_and_expiring_certificates(app) {
        let device = expect_json(app.post("/devices", ADMIN_TOKEN, json!({ "name": "expiring" })).await, StatusCode::CREATED).await;
        let id = device["device"]["id"].as_str().unwrap().to_string();
        let path = format!("/devices/{id}/certificates");
        let issued: Value =
            expect_json(app.request(Method::POST, &path, Some(ADMIN_TOKEN), None).await, StatusCode::CREATED).await;
        assert!(issued["certificate"]["notAfter"].is_string(), "{issued}");

        let (_, now) = scrape(&app, "text/plain").await;
        assert_eq!(sample(&now, "herd_certificates_expiring_30d"), Some(0.0), "{now}");
        let pools: &[&str] = match app.engine { Engine::Sqlite => &["writer", "reader"], Engine::Postgres => &["postgres"] };
        for pool in pools {
            let max = sample(&now, &format!("herd_db_pool_max_connections{{pool=\"{pool}\"}}"));
            assert!(max.is_some_and(|max| max >= 1.0), "{pool}: {now}");
            let in_use = sample(&now, &format!("herd_db_pool_connections{{pool=\"{pool}\",state=\"in_use\"}}"));
            assert!(in_use.is_some(), "{pool}: {now}");
        }
        assert_eq!(sample(&now, "herd_event_backlog"), Some(0.0), "{now}");
        assert_eq!(sample(&now, "herd_event_backlog_oldest_age_seconds"), Some(0.0), "{now}");

        // 340 days later the certificate (365 days) is within 30 days of its end; at 366 it is past.
        app.clock.advance(chrono::Duration::days(340));
        let (_, later) = scrape(&app, "text/plain").await;
        assert_eq!(sample(&later, "herd_certificates_expiring_30d"), Some(1.0), "{later}");
        app.clock.advance(chrono::Duration::days(26));
        let (_, past) = scrape(&app, "text/plain").await;
        assert_eq!(sample(&past, "herd_certificates_expiring_30d"), Some(0.0), "{past}");

        // A job step run through the scheduler is counted, timed and stamped.
        let stop = herd::shutdown::CancellationToken::new();
        let job = herd::jobs::run_every_from(
            herd::jobs::JobObserver::of(&app.state), Duration::ZERO, "test-job", Duration::from_secs(3600), stop.clone(), || async { Ok(()) });
        let mut runs = None;
        for _ in 0..500 {
            let (_, text) = scrape(&app, "text/plain").await;
            runs = sample(&text, "herd_job_runs_total{job=\"test-job\",outcome=\"ok\"}");
            if runs.is_some() {
                assert!(sample(&text, "herd_job_duration_seconds_count{job=\"test-job\"}") == Some(1.0), "{text}");
                assert!(sample(&text, "herd_job_last_success_timestamp_seconds{job=\"test-job\"}").is_some_and(|t| t > 1.0e9), "{text}");
                assert!(sample(&text, "herd_job_lag_seconds{job=\"test-job\"}").is_some(), "{text}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        job.await.unwrap();
        assert_eq!(runs, Some(1.0));
    }

    async fn the_grafana_dashboard_graphs_only_what_herd_serves(app) {
        let path = format!("{}/deploy/grafana/herd-dashboard.json", env!("CARGO_MANIFEST_DIR"));
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut exprs = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                exprs.push(target["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(exprs.len() >= 20, "{exprs:?}");
        let (_, text) = scrape(&app, "text/plain").await;
        let served = families(&text);
        let mut graphed = BTreeSet::new();
        for expr in &exprs {
            let mut rest = expr.as_str();
            while let Some(start) = rest.find("herd_") {
                let name: String = rest[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[start + name.len()..];
                graphed.insert(name);
            }
        }
        for name in &graphed {
            let family = served.iter().find(|(family, kind)| {
                name == family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"].iter().any(|suffix| *name == format!("{family}{suffix}")))
            });
            assert!(family.is_some(), "the dashboard graphs {name}, which /metrics does not serve: {served:?}");
        }
        // And the operator's figures the issue names are all on the dashboard.
        for needed in ["herd_http_requests_total", "herd_http_request_duration_seconds_bucket", "herd_db_pool_connections",
            "herd_job_duration_seconds_bucket", "herd_job_lag_seconds", "herd_event_backlog", "herd_certificates_expiring_30d"] {
            assert!(graphed.contains(needed), "the dashboard does not graph {needed}");
        }
    }
}
