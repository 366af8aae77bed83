//! An open-loop HTTP/1.1 load generator for `benches/compare.sh`: requests are scheduled
//! at a fixed rate, and each one's latency is measured from the moment it *should* have
//! been sent, so a stalled server cannot hide its queue (the coordinated-omission
//! correction of wrk2). Loopback only.
//!
//! `loadgen URL RATE SECONDS [CONNECTIONS]` prints one line:
//! `rate=… sent=… errors=… p50_us=… p99_us=… p999_us=… max_us=…`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 3 {
        eprintln!("usage: loadgen URL RATE SECONDS [CONNECTIONS]");
        std::process::exit(2);
    }
    let url: http::Uri = args[0].parse().expect("URL");
    let rate: f64 = args[1].parse().expect("RATE (requests/s)");
    let secs: f64 = args[2].parse().expect("SECONDS");
    let conns: usize = args.get(3).map_or(64, |c| c.parse().expect("CONNECTIONS"));
    let host = url.authority().expect("URL has host:port").to_string();
    assert!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "loadgen only targets loopback"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let total = (rate * secs) as u64;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now() + Duration::from_millis(50);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (next, errors, host, url) =
                (next.clone(), errors.clone(), host.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                let stream = tokio::net::TcpStream::connect(&host)
                    .await
                    .expect("connect");
                stream.set_nodelay(true).ok();
                let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("handshake");
                tokio::spawn(conn);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let req = http::Request::get(url.path())
                        .header("host", &host)
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    let ok = match tx.send_request(req).await {
                        Ok(resp) => {
                            resp.status().is_success() && resp.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    hist.saturating_record(due.elapsed().as_micros() as u64);
                }
                hist
            }));
        }
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        for t in tasks {
            all.add(t.await.expect("task")).expect("same bounds");
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "rate={:.0} sent={} errors={} p50_us={} p99_us={} p999_us={} max_us={}",
            all.len() as f64 / elapsed,
            all.len(),
            errors.load(Ordering::Relaxed),
            all.value_at_quantile(0.50),
            all.value_at_quantile(0.99),
            all.value_at_quantile(0.999),
            all.max()
        );
    });
}
