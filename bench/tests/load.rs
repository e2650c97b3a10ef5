//! The load generator against a tiny HTTP/1.1 server written here: it proves that workers keep
//! one connection each, that job counts and deadlines are honoured, and that rejected responses
//! are counted as failures rather than measured. No herd server is involved.
// Test and example code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_bench::http::{send_once, Method, Request, StatusCode};
use herd_bench::load::{run_load, LoadPlan, Stop, Workload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers `POST /echo` with its body and anything else with 404; counts accepted connections.
async fn spawn_echo_server() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (addr, connections)
}

async fn serve(mut stream: TcpStream) {
    let mut buffer = Vec::new();
    loop {
        let Some(header_end) = find(&buffer, b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < header_end + 4 + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buffer[header_end + 4..header_end + 4 + length].to_vec();
        buffer.drain(..header_end + 4 + length);
        let (status, body) = if head.starts_with("POST /echo ") {
            ("200 OK", body)
        } else {
            ("404 Not Found", b"{\"title\":\"Not Found\"}".to_vec())
        };
        // One write per response: a header write followed by a body write would meet Nagle's
        // algorithm and the client's delayed ACK (40 ms per request).
        let mut response =
            format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes();
        response.extend_from_slice(&body);
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

struct Echo {
    path: &'static str,
}

impl Workload for Echo {
    fn request(&self, job: u64) -> Request {
        Request::new(Method::POST, self.path)
            .bearer(Arc::from("token"))
            .json_bytes(Bytes::from(format!("{{\"job\":{job}}}")))
    }

    fn accept(&self, job: u64, response: &herd_bench::http::Response) -> Result<(), String> {
        herd_bench::load::expect_success(response)?;
        let echoed: serde_json::Value = response.json().map_err(|e| e.to_string())?;
        if echoed["job"] == job {
            Ok(())
        } else {
            Err(format!("job {job} echoed as {echoed}"))
        }
    }
}

#[tokio::test]
async fn a_job_bounded_run_does_every_job_on_one_connection_per_worker() {
    let (addr, connections) = spawn_echo_server().await;
    let plan = LoadPlan { label: "test".into(), concurrency: 4, stop: Stop::Jobs(500) };
    let outcome = run_load(addr, Arc::new(Echo { path: "/echo" }), &plan).await.expect("load runs");
    assert_eq!(outcome.completed, 500, "{:?}", outcome.first_error);
    assert_eq!(outcome.failed, 0);
    assert_eq!(outcome.issued, 500);
    assert_eq!(outcome.latency_us.len(), 500);
    assert!(outcome.latency_ms(0.99) >= outcome.latency_ms(0.5));
    assert_eq!(connections.load(Ordering::SeqCst), 4, "keep-alive, one per worker");
}

#[tokio::test]
async fn a_timed_run_stops_at_its_deadline() {
    let (addr, _) = spawn_echo_server().await;
    let deadline = Duration::from_millis(300);
    let plan = LoadPlan { label: "test".into(), concurrency: 2, stop: Stop::After(deadline) };
    // How many requests fit before the deadline, and how soon after it the last one returns,
    // depend on the machine's load; what the run owes is to go on until the deadline and then
    // stop. A run that ignored its deadline would never end: the guard only turns that into a
    // failure, far beyond any scheduling delay.
    let run = run_load(addr, Arc::new(Echo { path: "/echo" }), &plan);
    let outcome = tokio::time::timeout(Duration::from_secs(60), run).await.expect("the run stops").expect("load runs");
    assert!(outcome.elapsed >= deadline, "stopped early: {:?}", outcome.elapsed);
    assert_eq!(outcome.failed, 0, "{:?}", outcome.first_error);
    assert_eq!(outcome.latency_us.len(), outcome.completed);
}

#[tokio::test]
async fn rejected_responses_are_failures_not_measurements() {
    let (addr, _) = spawn_echo_server().await;
    let plan = LoadPlan { label: "test".into(), concurrency: 2, stop: Stop::Jobs(20) };
    let outcome = run_load(addr, Arc::new(Echo { path: "/missing" }), &plan).await.expect("load runs");
    assert_eq!(outcome.completed, 0);
    assert_eq!(outcome.failed, 20);
    assert_eq!(outcome.latency_us.len(), 0);
    assert!(outcome.first_error.as_deref().is_some_and(|error| error.starts_with("404")));

    let probe = send_once(addr, &Request::new(Method::GET, "/missing")).await.expect("request");
    assert!(herd_bench::probe::is_missing_route(probe.status));
    assert_eq!(probe.status, StatusCode::NOT_FOUND);
}
