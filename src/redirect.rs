//! A plain listener with `redirect_https`: every request is answered with
//! `308 Permanent Redirect` to the same host and target over https (RFC 9110 §15.4.9:
//! unlike 301, the method and body are kept). Nothing is proxied from here.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use crate::connections::Watch;

/// Serves one connection of a redirecting listener until it closes or shutdown asks
/// it to finish. `https_port` is where the TLS listener is (443 is left out of the
/// URL).
pub async fn serve(
    stream: TcpStream,
    builder: &auto::Builder<TokioExecutor>,
    https_port: u16,
    watch: Watch,
) {
    let service =
        service_fn(move |req| async move { Ok::<_, Infallible>(answer(&req, https_port)) });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = watch.stopping();
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "redirect connection ended with an error");
    }
}

/// The redirect for `req`, or 400 when it names no valid host.
pub fn answer(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    match location(req.uri(), req.headers().get(header::HOST), https_port) {
        Some(to) => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"moved to https\n")));
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(header::LOCATION, to);
            resp
        }
        None => {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"a request needs a valid Host to be redirected to https\n",
            )));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp
        }
    }
}

/// `https://host[:port]/target`: the host from the request's authority (HTTP/2, or an
/// absolute-form target) or its Host field, without the port it came to.
pub fn location(
    uri: &http::Uri,
    host: Option<&HeaderValue>,
    https_port: u16,
) -> Option<HeaderValue> {
    let authority = match uri.authority() {
        Some(a) => a.clone(),
        None => host?.to_str().ok()?.parse::<http::uri::Authority>().ok()?,
    };
    let name = authority.host();
    if name.is_empty() || authority.as_str().contains('@') {
        return None;
    }
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let text = if https_port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{https_port}{target}")
    };
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(uri: &str, host: Option<&str>, port: u16) -> Option<String> {
        let uri: http::Uri = uri.parse().expect("uri");
        let host = host.map(|h| HeaderValue::from_str(h).expect("host"));
        location(&uri, host.as_ref(), port).map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn the_location_keeps_host_and_target_and_drops_the_plain_port() {
        assert_eq!(
            to("/a/b?c=1", Some("example.com:80"), 443).as_deref(),
            Some("https://example.com/a/b?c=1")
        );
        assert_eq!(
            to("/", Some("example.com"), 8443).as_deref(),
            Some("https://example.com:8443/")
        );
        assert_eq!(
            to("/x", Some("[::1]:8080"), 443).as_deref(),
            Some("https://[::1]/x")
        );
    }

    #[test]
    fn a_request_without_a_usable_host_gets_no_location() {
        assert_eq!(to("/", None, 443), None);
        assert_eq!(to("/", Some("bad host"), 443), None);
        assert_eq!(to("/", Some("user@example.com"), 443), None);
    }
}
