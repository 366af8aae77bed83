//! Gates outside the process: webhooks (a POST of the rollout record that must answer
//! 2xx) and PromQL queries on a Prometheus server's HTTP API
//! (`GET /api/v1/query?query=…`). Plain `http://` only, each call bounded by
//! [`CALL_TIMEOUT`].

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::judge::GateResult;
use super::plan::Query;
use crate::color::Color;

/// How long one webhook or query may take, connect to last byte.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read from a webhook or Prometheus.
const MAX_ANSWER: usize = 1024 * 1024;

/// POSTs `body` to each URL in turn; the first that does not answer 2xx in time is the
/// veto, named with its status or error.
pub async fn webhooks(urls: &[String], body: &serde_json::Value) -> Result<(), String> {
    let body = Bytes::from(body.to_string());
    for url in urls {
        match call(Method::POST, url, body.clone()).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, answer)) => {
                let text = String::from_utf8_lossy(&answer);
                let text: String = text.chars().take(200).collect();
                return Err(format!("webhook {url} answered {status}: {}", text.trim()));
            }
            Err(e) => return Err(format!("webhook {url} failed: {e}")),
        }
    }
    Ok(())
}

/// Evaluates each query on `prometheus` (its base URL) with `$canary` and `$live`
/// replaced. `Err` when a query cannot be evaluated, returns no sample or returns NaN:
/// that is inconclusive, never a pass.
pub async fn queries(
    prometheus: &str,
    queries: &[Query],
    canary: Color,
    live: Color,
) -> Result<Vec<GateResult>, String> {
    let mut results = Vec::new();
    for q in queries {
        let expr = q
            .query
            .replace("$canary", canary.as_str())
            .replace("$live", live.as_str());
        let url = format!("{prometheus}/api/v1/query?query={}", encode(&expr));
        let (status, answer) = call(Method::GET, &url, Bytes::new())
            .await
            .map_err(|e| format!("query {expr:?} on {prometheus} failed: {e}"))?;
        if !status.is_success() {
            return Err(format!("query {expr:?} answered {status}"));
        }
        let value =
            first_value(&answer).ok_or_else(|| format!("query {expr:?} returned no sample"))?;
        if value.is_nan() {
            // 0/0 in PromQL: a rate over no requests. Nothing was measured.
            return Err(format!(
                "query {expr:?} returned NaN (no data in its window)"
            ));
        }
        let name = q.name.clone().unwrap_or_else(|| q.query.clone());
        let (threshold, passed) = match (q.max, q.min) {
            (Some(max), _) if value > max => (max, false),
            (_, Some(min)) if value < min => (min, false),
            (Some(max), _) => (max, true),
            (None, Some(min)) => (min, true),
            (None, None) => (f64::NAN, true),
        };
        results.push(GateResult {
            gate: format!("query {name}"),
            value,
            live: None,
            threshold,
            passed,
        });
    }
    Ok(results)
}

/// The first sample of an instant query's answer (vector or scalar).
fn first_value(answer: &[u8]) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let data = &v["data"];
    let pair = match data["resultType"].as_str()? {
        "vector" => &data["result"].as_array()?.first()?["value"],
        "scalar" => &data["result"],
        _ => return None,
    };
    pair.get(1)?.as_str()?.parse().ok()
}

/// Percent-encodes a query parameter (RFC 3986 unreserved characters stay).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn call(method: Method, url: &str, body: Bytes) -> Result<(http::StatusCode, Bytes), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs are supported".into());
    }
    let authority = uri.authority().ok_or("the URL has no host")?.clone();
    let address = if authority.port().is_some() {
        authority.as_str().to_owned()
    } else {
        format!("{}:80", authority.host())
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("cutover/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_or_scalar_answer_gives_its_first_value() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"0.25"]}]}}"#;
        assert_eq!(first_value(vector), Some(0.25));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(first_value(scalar), Some(3.0));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(first_value(empty), None);
        let nan = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.5,"NaN"]}]}}"#;
        assert!(
            first_value(nan).is_some_and(f64::is_nan),
            "NaN is read, then refused"
        );
        assert_eq!(encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }
}
