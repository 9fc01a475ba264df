//! Fault injection for delivery tests: an in-process HTTP/1.1 proxy in front of a real FHIR peer
//! that answers scripted faults (error statuses, delays, hangs, dropped connections, lost
//! responses) and otherwise passes requests through unchanged.
//!
//! The proxy serves the same path layout as its upstream: `<proxy origin>/fhir/...` goes to
//! `<upstream origin>/fhir/...`, and anything else (e.g. `/oauth2/token`) to the same path
//! upstream. Bodies and headers pass through untouched, so absolute URLs in responses (the
//! `Location` header, `fullUrl`s, `link`s) still name the upstream, not the proxy.
//!
//! Self-contained (no `super::` items): the tests include it as `common::fault`; a bench could
//! with `#[path = "../tests/common/fault.rs"] mod fault;`.
#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the proxy does with a matching request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answers with this status and an OperationOutcome body; nothing reaches the upstream.
    /// A 429 carries `Retry-After: 1`.
    Status(u16),
    /// Like `Status`, with `Retry-After: <seconds>` whatever the status.
    StatusRetryAfter(u16, u64),
    /// Waits, then passes the request through. The forward runs in its own task, so it
    /// completes (and a write happens upstream) even when the client gave up earlier: a slow
    /// server, or a timeout when longer than the client's timeout.
    Delay(Duration),
    /// Never answers; the connection stays open until the client gives up.
    Hang,
    /// Closes the TCP connection without any HTTP response; nothing reaches the upstream.
    Drop,
    /// Forwards the request (so the write happens upstream), waits for the upstream's answer,
    /// then closes the connection without answering: the lost-response case.
    DropAfterForward,
}

/// Which requests a fault applies to. Paths are compared after a leading `/fhir`
/// (`/Condition`, `/Patient/1`, `` for the base itself); paths outside `/fhir` as they are
/// (`/oauth2/token`).
#[derive(Clone, Debug, PartialEq)]
pub enum Matcher {
    Any,
    /// HTTP method, e.g. `"POST"`.
    Method(&'static str),
    /// Path prefix after `/fhir`, e.g. `"/Condition"` (matches `/Condition/1` and
    /// `/Condition?x`, since the query is not part of the path).
    PathPrefix(String),
    /// Both: method and path prefix, e.g. `("POST", "/Condition")`.
    MethodPath(&'static str, String),
    /// Method and exact path, e.g. `("POST", "")` for transaction and batch Bundles posted to
    /// the base.
    Exact(&'static str, String),
}

impl Matcher {
    fn matches(&self, method: &str, path: &str) -> bool {
        match self {
            Matcher::Any => true,
            Matcher::Method(m) => m.eq_ignore_ascii_case(method),
            Matcher::PathPrefix(p) => path.starts_with(p.as_str()),
            Matcher::MethodPath(m, p) => m.eq_ignore_ascii_case(method) && path.starts_with(p),
            Matcher::Exact(m, p) => {
                m.eq_ignore_ascii_case(method) && path.trim_end_matches('/') == p.as_str()
            }
        }
    }
}

struct Scripted {
    matcher: Matcher,
    fault: Fault,
    remaining: usize,
}

#[derive(Default)]
struct State {
    script: Vec<Scripted>,
    always: Vec<(Matcher, Fault)>,
    /// (sequence number, method, path+query, status or 0)
    seen: Vec<(u64, String, String, u16)>,
    next_seq: u64,
}

impl State {
    /// The fault for a request: the first scripted entry that matches (consumed), else the
    /// first persistent one.
    fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        if let Some(i) = self
            .script
            .iter()
            .position(|s| s.remaining > 0 && s.matcher.matches(method, path))
        {
            let fault = self.script[i].fault.clone();
            self.script[i].remaining -= 1;
            if self.script[i].remaining == 0 {
                self.script.remove(i);
            }
            return Some(fault);
        }
        self.always
            .iter()
            .find(|(m, _)| m.matches(method, path))
            .map(|(_, f)| f.clone())
    }
}

struct Shared {
    state: Mutex<State>,
    client: reqwest::Client,
    /// `http://127.0.0.1:<port>` of the upstream.
    upstream_origin: String,
}

impl Shared {
    fn set_status(&self, seq: u64, status: u16) {
        let mut state = self.state.lock().unwrap();
        if let Some(entry) = state.seen.iter_mut().rev().find(|e| e.0 == seq) {
            entry.3 = status;
        }
    }
}

/// A fault-injecting proxy on `127.0.0.1:<port>`; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>/fhir`
    pub base: String,
    pub port: u16,
    /// The upstream base it forwards to.
    pub upstream_base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

type Body = Full<Bytes>;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, also_skip: &[HeaderName]) {
    for (name, value) in from {
        if HOP_BY_HOP.contains(&name.as_str()) || also_skip.contains(name) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

fn issue_code(status: u16) -> &'static str {
    match status {
        400 => "invalid",
        401 | 403 => "security",
        404 | 410 => "not-found",
        409 | 412 => "conflict",
        422 => "processing",
        429 => "throttled",
        503 | 504 => "transient",
        _ => "exception",
    }
}

fn fault_response(status: u16, retry_after: Option<u64>) -> Response<Body> {
    let outcome = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": issue_code(status),
            "diagnostics": format!("fault injected by the test proxy: HTTP {status}"),
        }]
    });
    let mut resp = Response::new(Full::new(Bytes::from(outcome.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid HTTP status");
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

struct Forward {
    method: hyper::Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
}

async fn forward(shared: &Shared, req: Forward) -> Response<Body> {
    let url = format!("{}{}", shared.upstream_origin, req.path_and_query);
    let mut headers = HeaderMap::new();
    copy_headers(
        &req.headers,
        &mut headers,
        &[header::HOST, header::CONTENT_LENGTH, header::EXPECT],
    );
    let sent = shared
        .client
        .request(req.method, &url)
        .headers(headers)
        .body(req.body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fault proxy: upstream {url}: {e}");
            return fault_response(502, None);
        }
    };
    let status = upstream.status();
    let upstream_headers = upstream.headers().clone();
    let body = match upstream.bytes().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fault proxy: upstream body {url}: {e}");
            return fault_response(502, None);
        }
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    copy_headers(
        &upstream_headers,
        resp.headers_mut(),
        &[header::CONTENT_LENGTH],
    );
    resp
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    abort: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let path = req.uri().path();
    let rel = match path.strip_prefix("/fhir") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_owned(),
        _ => path.to_owned(),
    };
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            // The client went away mid-body.
            abort.notify_one();
            return std::future::pending().await;
        }
    };
    let (seq, fault) = {
        let mut state = shared.state.lock().unwrap();
        let fault = state.take_fault(method.as_str(), &rel);
        let seq = state.next_seq;
        state.next_seq += 1;
        state
            .seen
            .push((seq, method.to_string(), path_and_query.clone(), 0));
        (seq, fault)
    };
    let request = Forward {
        method,
        path_and_query,
        headers,
        body,
    };
    let resp = match fault {
        None => forward(&shared, request).await,
        Some(Fault::Status(status)) => fault_response(status, (status == 429).then_some(1)),
        Some(Fault::StatusRetryAfter(status, secs)) => fault_response(status, Some(secs)),
        Some(Fault::Delay(delay)) => {
            let task_shared = shared.clone();
            // Detached: the forward completes even if the client hangs up during the delay.
            let task = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let resp = forward(&task_shared, request).await;
                task_shared.set_status(seq, resp.status().as_u16());
                resp
            });
            task.await.unwrap_or_else(|_| fault_response(502, None))
        }
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Drop) => {
            abort.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::DropAfterForward) => {
            let task_shared = shared.clone();
            let task = tokio::spawn(async move { forward(&task_shared, request).await });
            let _ = task.await;
            abort.notify_one();
            return std::future::pending().await;
        }
    };
    shared.set_status(seq, resp.status().as_u16());
    Ok(resp)
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let abort = Arc::new(Notify::new());
    let service_abort = abort.clone();
    let service = service_fn(move |req| handle(req, shared.clone(), service_abort.clone()));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    // Dropping the connection future drops the socket: the client sees the connection close
    // with no response (Drop, DropAfterForward).
    tokio::select! {
        _ = conn => {}
        _ = abort.notified() => {}
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port in front of `upstream_base` (`http://host:port/fhir`).
    pub async fn start(upstream_base: &str) -> FaultProxy {
        let upstream_origin = upstream_base
            .trim_end_matches('/')
            .trim_end_matches("/fhir")
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            client: carebridge::outbound::client_builder()
                .no_proxy()
                // A fresh upstream connection per request: no stale pooled connection after
                // the upstream restarts.
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .expect("proxy http client"),
            upstream_origin,
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the accept task ends them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            connections.spawn(serve_connection(stream, accept_shared.clone()));
                        }
                        Err(e) => {
                            eprintln!("fault proxy: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        FaultProxy {
            base: format!("http://127.0.0.1:{port}/fhir"),
            port,
            upstream_base: upstream_base.to_owned(),
            shared,
            task,
        }
    }

    /// The next `times` requests that match get `fault`; after that they pass through.
    /// Scripted faults are consumed in the order pushed, before any persistent fault.
    pub fn push(&self, matcher: Matcher, fault: Fault, times: usize) {
        if times == 0 {
            return;
        }
        self.shared.state.lock().unwrap().script.push(Scripted {
            matcher,
            fault,
            remaining: times,
        });
    }

    /// A persistent fault for requests matching `matcher` (replacing one set for the same
    /// matcher); `None` clears it.
    pub fn set_always(&self, matcher: Matcher, fault: Option<Fault>) {
        let mut state = self.shared.state.lock().unwrap();
        state.always.retain(|(m, _)| *m != matcher);
        if let Some(f) = fault {
            state.always.push((matcher, f));
        }
    }

    /// Drops every scripted and persistent fault.
    pub fn clear_faults(&self) {
        let mut state = self.shared.state.lock().unwrap();
        state.script.clear();
        state.always.clear();
    }

    /// Scripted faults not yet consumed (sum of remaining counts).
    pub fn pending(&self) -> usize {
        self.shared
            .state
            .lock()
            .unwrap()
            .script
            .iter()
            .map(|s| s.remaining)
            .sum()
    }

    /// Every request received, in arrival order: method, path and query, and the status the
    /// proxy answered (0 when it dropped the connection, or has not answered yet: Hang, or a
    /// Delay still running). A Delay's status is the upstream's, even if the client had
    /// already given up.
    pub fn seen(&self) -> Vec<(String, String, u16)> {
        self.shared
            .state
            .lock()
            .unwrap()
            .seen
            .iter()
            .map(|(_, m, p, s)| (m.clone(), p.clone(), *s))
            .collect()
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        self.shared.state.lock().unwrap().seen.clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
