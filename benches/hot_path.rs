//! Criterion benches for the per-request pieces of the data path: the route decision
//! and backend pick on a loaded snapshot, the swap itself, header rewriting on hyper's
//! path and head parsing + rewriting on the relay's.
//! Run with `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request};

use cutover::config::{PoolConfig, UpstreamConfig};
use cutover::drain::Tracker;
use cutover::h1;
use cutover::headers;
use cutover::metrics::Telemetry;
use cutover::pool::Pool;
use cutover::rules::forwarded::Client;
use cutover::rules::{Policy, request};
use cutover::snapshot::{Canary, Color, Snapshot};
use cutover::upstream::Upstreams;

fn snapshot() -> Snapshot {
    let pool = |base: u16| {
        let backends = (0..4)
            .map(|i| format!("10.0.0.{}:{}", i + 1, base))
            .collect();
        Arc::new(
            Pool::build(
                &PoolConfig {
                    backends,
                    ..PoolConfig::default()
                },
                &[],
            )
            .expect("valid"),
        )
    };
    Snapshot::new(
        Color::Blue,
        [pool(8001), pool(8002)],
        cutover::routing::Routing::default(),
    )
}

fn route_and_pick(c: &mut Criterion) {
    let swap = Arc::new(ArcSwap::from_pointee(snapshot()));
    let req = Request::get("/api/items?page=2").body(()).expect("request");
    for (name, recording) in [
        ("route + pick + in-flight guard (metrics off)", false),
        (
            "route + pick + in-flight guard + recording (metrics on)",
            true,
        ),
    ] {
        let upstreams = Arc::new(Upstreams::new(
            &UpstreamConfig::default(),
            Arc::clone(&swap),
        ));
        let telemetry = Arc::new(Telemetry::new(recording, None));
        let tracker = Arc::new(Tracker::new(Duration::from_secs(30), upstreams, telemetry));
        c.bench_function(name, |b| {
            b.iter(|| {
                let snap = swap.load();
                let color = snap
                    .route(black_box(&req), std::net::Ipv4Addr::LOCALHOST.into(), false)
                    .color;
                let backend = snap.pool(color).pick().expect("healthy backend");
                let mut guard = tracker.start(color, backend);
                guard.status = 200;
                black_box(guard);
            })
        });
    }
}

/// Routing alone, without and with a 10 % canary: a request that carries its bucket
/// cookie, and one that has none (a bucket is drawn and a cookie set).
fn route_canary(c: &mut Criterion) {
    let off = snapshot();
    let on = off.with_canary(Some(Canary {
        color: Color::Green,
        weight: 1000,
    }));
    let plain = Request::get("/api/items?page=2").body(()).expect("request");
    let keyed = Request::get("/api/items?page=2")
        .header("cookie", "session=abc; cutover-bucket=4f1c2a9e")
        .body(())
        .expect("request");
    let client = std::net::Ipv4Addr::LOCALHOST.into();
    for (name, snap, req) in [
        ("route: no canary", &off, &plain),
        ("route: 10 % canary, bucket cookie sent", &on, &keyed),
        ("route: 10 % canary, no cookie (one drawn)", &on, &plain),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| black_box(snap.route(black_box(req), client, false)))
        });
    }
}

fn swap(c: &mut Criterion) {
    let swap = ArcSwap::from_pointee(snapshot());
    c.bench_function("switch: build next snapshot + store", |b| {
        b.iter(|| {
            let next = swap.load().switched(Color::Green, 0);
            swap.store(Arc::new(next));
        })
    });
}

fn header_rewrite(c: &mut Criterion) {
    let mut typical = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, br"),
        ("cookie", "session=abc123; theme=dark"),
    ] {
        typical.insert(k, HeaderValue::from_static(v));
    }
    let mut hop = typical.clone();
    hop.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-trace"),
    );
    hop.insert("x-trace", HeaderValue::from_static("1"));
    hop.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    let peer = headers::forwarded_for("192.0.2.44".parse().expect("ip"));
    let client = Client {
        addr: peer.as_bytes(),
        trusted: false,
        proto: "http",
    };
    let policy = Policy::default();

    for (name, template) in [
        ("headers: typical request", typical),
        ("headers: hop-by-hop + XFF chain", hop),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let fields = headers::field_lines(black_box(&template));
                let head = request::Head {
                    method: "GET",
                    target: b"/products?page=2",
                    version: request::Version::Http11,
                    authority: None,
                    fields: &fields,
                    raw_len: None,
                };
                match request::check(&head, &policy) {
                    Ok(plan) => headers::forwarded(&template, &fields, &plan, client, b"").len(),
                    Err(_) => 0,
                }
            })
        });
    }
}

/// The relay's per-request head work: parse the client's request and write it for the
/// backend; parse the backend's response and write it for the client.
fn relay_heads(c: &mut Criterion) {
    let request: &[u8] = b"GET /products?page=2 HTTP/1.1\r\nHost: shop.example\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: text/html,application/xhtml+xml\r\n\
        Accept-Encoding: gzip, br\r\nCookie: session=abc123; theme=dark\r\n\
        Connection: keep-alive\r\n\r\n";
    let response: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 03:00:00 GMT\r\n\
        Content-Type: text/html\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
    let mut out = Vec::with_capacity(4096);
    let policy = Policy::default();
    let client = Client {
        addr: b"192.0.2.44",
        trusted: false,
        proto: "http",
    };
    c.bench_function("relay: parse + rewrite a request head", |b| {
        b.iter(|| {
            let mut fields = h1::fields();
            if let h1::Parsed::Complete(req) =
                h1::parse_request(black_box(request), &mut fields, &policy)
            {
                out.clear();
                req.write_forwarded(client, &mut out);
            }
            out.len()
        })
    });
    c.bench_function("relay: parse + rewrite a response head", |b| {
        b.iter(|| {
            let mut fields = h1::fields();
            if let Ok(Some(resp)) =
                h1::parse_response(black_box(response), &mut fields, false, &policy.limits)
            {
                out.clear();
                resp.write_forwarded(
                    Some("blue"),
                    &cutover::routing::SetCookies::default(),
                    false,
                    &mut out,
                );
            }
            out.len()
        })
    });
}

/// Hyper's path on raw backend sockets: the request head written from hyper's parsed
/// request (its fields already rewritten), the backend's response head parsed and
/// turned into hyper's response parts, and a chunked body decoded.
fn raw_socket_heads(c: &mut Criterion) {
    let req = http::Request::get("/products?page=2")
        .header("host", "shop.example")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .header("accept", "text/html,application/xhtml+xml")
        .header("accept-encoding", "gzip, br")
        .header("cookie", "session=abc123; theme=dark")
        .header("x-forwarded-for", "192.0.2.44")
        .header("x-forwarded-proto", "https")
        .header("via", "2 cutover")
        .body(())
        .expect("request");
    c.bench_function(
        "raw sockets: write a request head from hyper's request",
        |b| b.iter(|| cutover::proxy::request_head(black_box(&req)).len()),
    );
    let response: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 03:00:00 GMT\r\n\
        Content-Type: text/html\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
    let limits = Policy::default().limits;
    let cookies = cutover::routing::SetCookies::default();
    c.bench_function(
        "raw sockets: parse a response head into hyper's parts",
        |b| {
            b.iter(|| {
                let mut fields = h1::fields();
                match h1::parse_response(black_box(response), &mut fields, false, &limits) {
                    Ok(Some(resp)) => {
                        cutover::proxy::response_parts(&resp, Some(Color::Blue), &cookies)
                            .map_or(0, |p| p.headers.len())
                    }
                    _ => 0,
                }
            })
        },
    );
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend_from_slice(&[b'x'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    c.bench_function(
        "raw sockets: decode a 64 KiB chunked body (16 chunks)",
        |b| {
            b.iter(|| {
                let mut decoder = cutover::chunked::Chunked::default();
                let (mut at, mut data) = (0, 0);
                while !decoder.is_done() {
                    match decoder.decode(black_box(&body[at..]), None) {
                        Ok((n, span)) => {
                            at += n;
                            data += span.len();
                        }
                        Err(_) => break,
                    }
                }
                data
            })
        },
    );
}

criterion_group!(
    benches,
    route_and_pick,
    route_canary,
    swap,
    header_rewrite,
    relay_heads,
    raw_socket_heads
);
criterion_main!(benches);
