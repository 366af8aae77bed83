//! Upgraded connections (WebSocket) across a switch, and upgrades a backend refuses.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{Proxy, backend, raw_exchange, ws_backend};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
        {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(_)) => continue,
            other => panic!("websocket ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_on_blue_keeps_echoing_after_a_switch_and_is_closed_at_the_drain_deadline()
 {
    let proxy = Proxy::start(
        &[ws_backend("blue").await],
        &[ws_backend("green").await],
        "[drain]\ntimeout = \"1s\"",
    )
    .await;
    let url = format!("ws://{}/socket", proxy.addr);
    let (mut old, resp) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket through the proxy");
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(echo(&mut old, "a").await, "blue:a");
    assert_eq!(proxy.status().await["pools"]["blue"]["tunnels"], 1);

    let switched = proxy.switch("green").await;
    assert_eq!(switched["pools"]["blue"]["role"], "draining");
    assert_eq!(
        echo(&mut old, "b").await,
        "blue:b",
        "the open tunnel stays on blue"
    );

    let (mut new, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("second websocket");
    assert_eq!(
        echo(&mut new, "c").await,
        "green:c",
        "a new websocket lands on green"
    );

    // At the deadline the blue tunnel is closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match old.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the blue websocket outlived the drain deadline"
    );
    let status = proxy
        .wait_until("blue drained", |s| s["pools"]["blue"]["role"] == "idle")
        .await;
    assert_eq!(status["pools"]["blue"]["tunnels"], 0);
    assert_eq!(status["pools"]["blue"]["closed_by_drain"], 1);
    assert_eq!(status["pools"]["green"]["tunnels"], 1);
    assert_eq!(
        echo(&mut new, "d").await,
        "green:d",
        "green's tunnel is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_answered_200_with_a_request_pipelined_behind_it_gets_two_http_responses()
 {
    let proxy = Proxy::start(&[backend("blue").await], &[backend("green").await], "").await;
    // Both answers, then close.
    let reply = raw_exchange(
        proxy.addr,
        b"GET /first HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
    assert!(!reply.contains("101"), "{reply}");
    assert_eq!(reply.matches("\r\n\r\nblue").count(), 2, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_an_open_websocket_gets_the_drain_deadline_and_then_the_server_stops() {
    let mut proxy = Proxy::start(
        &[ws_backend("blue").await],
        &[ws_backend("green").await],
        "[drain]\ntimeout = \"1s\"",
    )
    .await;
    let url = format!("ws://{}/socket", proxy.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket");
    assert_eq!(echo(&mut ws, "a").await, "blue:a");

    let server = proxy.begin_stop();
    // Until the deadline the tunnel still works...
    assert_eq!(echo(&mut ws, "b").await, "blue:b");
    // ...then it is closed, and the server finishes well within its 30 s grace.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the websocket outlived the drain deadline at shutdown"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped once its tunnel was closed")
        .expect("server task");
}
