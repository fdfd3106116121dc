//! The inline client against real sockets: an upstream that answers scripted bytes, so every
//! framing, reuse and failure case is exercised on the wire.

use std::time::Duration;

use http::HeaderMap;
use http::header::HeaderValue;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

const SETTINGS: ClientSettings = ClientSettings {
    connect_timeout: Duration::from_secs(2),
    idle_timeout_ms: 60_000,
    max_head_bytes: 16 * 1024,
};

/// An upstream that reads one request head per answer and writes the scripted bytes; after the
/// last answer of a connection it closes it. Reports every accepted connection's request heads.
async fn upstream(
    connections: Vec<Vec<&'static [u8]>>,
) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for answers in connections {
            let (mut stream, _) = listener.accept().await.unwrap();
            let heads = heads.clone();
            tokio::spawn(async move {
                for answer in answers {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                    stream.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

/// Sends a request for `/path?q=1` with `headers`.
async fn send_with(
    addr: SocketAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<InlineBody>, SendError> {
    let mut head = BytesMut::new();
    encode_request_head(method, "/path?q=1", headers, &mut head);
    send(
        addr,
        Bodiless {
            method,
            head: &head,
        },
        SETTINGS,
    )
    .await
}

async fn body_of(response: Response<InlineBody>) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

fn host_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("app.example"));
    headers
}

#[tokio::test]
async fn a_content_length_response_is_read_and_its_connection_reused() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-up: 1\r\n\r\nhello";
    let (addr, mut heads) = upstream(vec![vec![answer, answer]]).await;
    let headers = host_headers();
    for _ in 0..2 {
        let response = send_with(addr, &Method::GET, &headers).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-up"], "1");
        assert_eq!(body_of(response).await.0, b"hello");
        assert_eq!(pool::idle_count(addr), 1, "back in the pool");
    }
    let head = heads.recv().await.unwrap();
    assert_eq!(head, "GET /path?q=1 HTTP/1.1\r\nhost: app.example\r\n\r\n");
    assert!(
        heads.recv().await.is_some(),
        "the second request used the same connection"
    );
}

#[tokio::test]
async fn a_chunked_response_streams_its_data_and_trailers() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\ngrpc-status: 0\r\n\r\n";
    let (addr, _heads) = upstream(vec![vec![answer]]).await;
    let headers = host_headers();
    let response = send_with(addr, &Method::GET, &headers).await.unwrap();
    let (data, trailers) = body_of(response).await;
    assert_eq!(data, b"wikipedia");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
    assert_eq!(pool::idle_count(addr), 1);
}

#[tokio::test]
async fn a_close_delimited_response_ends_at_eof_and_is_not_pooled() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
    let (addr, _heads) = upstream(vec![vec![answer]]).await;
    let headers = host_headers();
    let response = send_with(addr, &Method::GET, &headers).await.unwrap();
    assert_eq!(body_of(response).await.0, b"until the end");
    assert_eq!(pool::idle_count(addr), 0);
}

#[tokio::test]
async fn head_and_interim_responses_have_no_body() {
    let head_answer: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
    let interim: &[u8] =
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    let (addr, _heads) = upstream(vec![vec![head_answer, interim]]).await;
    let headers = host_headers();
    let response = send_with(addr, &Method::HEAD, &headers).await.unwrap();
    assert_eq!(response.headers()["content-length"], "100");
    assert!(response.body().is_end_stream());
    assert_eq!(body_of(response).await.0, b"");
    let response = send_with(addr, &Method::GET, &headers).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(pool::idle_count(addr), 1, "both on one connection");
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_by_a_new_one() {
    // The first connection answers once and closes; the request after it must not fail.
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, _heads) = upstream(vec![vec![answer], vec![answer]]).await;
    let headers = host_headers();
    let first = send_with(addr, &Method::GET, &headers).await.unwrap();
    assert_eq!(body_of(first).await.0, b"ok");
    tokio::time::sleep(Duration::from_millis(50)).await; // the close reaches us
    let second = send_with(addr, &Method::GET, &headers).await.unwrap();
    assert_eq!(body_of(second).await.0, b"ok");
}

#[tokio::test]
async fn connection_close_and_abandoned_bodies_are_not_pooled() {
    let close: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    let long: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234";
    let (addr, _heads) = upstream(vec![vec![close], vec![long]]).await;
    let headers = host_headers();
    let response = send_with(addr, &Method::GET, &headers).await.unwrap();
    assert_eq!(body_of(response).await.0, b"ok");
    assert_eq!(pool::idle_count(addr), 0);
    let response = send_with(addr, &Method::GET, &headers).await.unwrap();
    drop(response);
    assert_eq!(pool::idle_count(addr), 0);
}

#[tokio::test]
async fn a_body_cut_short_and_a_malformed_head_are_errors() {
    let short: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234";
    let garbage: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n";
    let (addr, _heads) = upstream(vec![vec![short], vec![garbage]]).await;
    let headers = host_headers();
    let response = send_with(addr, &Method::GET, &headers).await.unwrap();
    let error = response.into_body().collect().await.unwrap_err();
    assert!(matches!(error, IngressError::UpstreamClosed), "{error}");
    let error = send_with(addr, &Method::GET, &headers).await.unwrap_err();
    assert!(
        matches!(
            error,
            SendError::Exchange(IngressError::Upstream(WireError::ContentLength))
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let headers = host_headers();
    let error = send_with(addr, &Method::GET, &headers).await.unwrap_err();
    assert!(matches!(error, SendError::Connect(_)), "{error:?}");
}

#[tokio::test]
async fn the_sweep_closes_connections_idle_too_long() {
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (addr, _heads) = upstream(vec![vec![answer, answer]]).await;
    let headers = host_headers();
    let response = send_with(addr, &Method::GET, &headers).await.unwrap();
    body_of(response).await;
    assert_eq!(pool::idle_count(addr), 1);
    sweep(60_000);
    assert_eq!(pool::idle_count(addr), 1, "not idle long enough");
    tokio::time::sleep(Duration::from_millis(20)).await;
    sweep(10);
    assert_eq!(pool::idle_count(addr), 0);
}
