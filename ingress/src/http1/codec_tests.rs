use proptest::prelude::*;

use super::*;

const MAX: usize = 32 * 1024;

fn head(bytes: &[u8]) -> ResponseHead {
    head_for(bytes, false)
}

fn head_for(bytes: &[u8], head_request: bool) -> ResponseHead {
    match parse_response_head(bytes, head_request, MAX) {
        Ok(Parsed::Complete { head, len }) => {
            assert_eq!(len, bytes.len(), "the whole head is consumed");
            head
        }
        other => panic!("not a complete head: {other:?}"),
    }
}

/// Decodes `wire` fed in pieces of `step` bytes: the data, the trailers, the bytes left over.
fn decode_in_steps(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), WireError> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf, MAX)? {
            Chunk::Data(bytes) => data.extend_from_slice(&bytes),
            Chunk::End(trailers) => {
                assert!(decoder.is_done());
                return Ok((data, trailers));
            }
            Chunk::NeedMore => {
                assert!(fed < wire.len(), "decoder wants more than the whole body");
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn the_request_head_is_the_request_line_then_the_headers_as_given() {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("app.example"));
    headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    let mut out = BytesMut::new();
    encode_request_head(&Method::GET, "/a?b=c", &headers, &mut out);
    assert_eq!(
        &out[..],
        b"GET /a?b=c HTTP/1.1\r\nhost: app.example\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
    );
}

#[test]
fn framing_follows_rfc_9112_section_6_3() {
    let cases: &[(&[u8], bool, Framing, bool)] = &[
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n",
            false,
            Framing::Length(3),
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
            false,
            Framing::Length(7),
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
            Framing::Chunked,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
            false,
            Framing::Chunked,
            true,
        ),
        // Both: the coding wins and the connection is not reused (a smuggling shape).
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
            Framing::Chunked,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            false,
            Framing::UntilClose,
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\n",
            false,
            Framing::UntilClose,
            false,
        ),
        (
            b"HTTP/1.1 204 No Content\r\n\r\n",
            false,
            Framing::Empty,
            true,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            false,
            Framing::Empty,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            true,
            Framing::Empty,
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n",
            false,
            Framing::Length(3),
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nConnection: foo, Close\r\n\r\n",
            false,
            Framing::Length(3),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n",
            false,
            Framing::Length(3),
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\n",
            false,
            Framing::Length(3),
            true,
        ),
    ];
    for (wire, head_request, framing, reusable) in cases {
        let parsed = head_for(wire, *head_request);
        let text = String::from_utf8_lossy(wire);
        assert_eq!(parsed.framing, *framing, "{text}");
        assert_eq!(parsed.reusable, *reusable, "{text}");
    }
}

#[test]
fn status_version_and_headers_are_kept() {
    let parsed = head(b"HTTP/1.1 404 Not Found\r\nServer: up\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(parsed.status, StatusCode::NOT_FOUND);
    assert_eq!(parsed.version, Version::HTTP_11);
    assert_eq!(parsed.headers["server"], "up");
    assert_eq!(parsed.headers.get_all("set-cookie").iter().count(), 2);
}

#[test]
fn bad_heads_are_errors_and_partial_heads_ask_for_more() {
    let partial = parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-le", false, MAX);
    assert!(matches!(partial, Ok(Parsed::Partial)));
    let bad: &[(&[u8], WireError)] = &[
        (b"HTTP/1.1 2x0 OK\r\n\r\n", WireError::Head),
        (b"SMTP 220 hello\r\n\r\n", WireError::Head),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            WireError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            WireError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
            WireError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            WireError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n",
            WireError::ContentLength,
        ),
    ];
    for (wire, error) in bad {
        let got = parse_response_head(wire, false, MAX).map(|_| ());
        assert_eq!(got, Err(*error), "{}", String::from_utf8_lossy(wire));
    }
    let long = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(100));
    assert_eq!(
        parse_response_head(long.as_bytes(), false, 64).map(|_| ()),
        Err(WireError::HeadTooLarge)
    );
    let many: String = (0..=MAX_RESPONSE_HEADERS)
        .map(|i| format!("h{i}: v\r\n"))
        .collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(
        parse_response_head(many.as_bytes(), false, MAX).map(|_| ()),
        Err(WireError::HeadTooLarge)
    );
}

#[test]
fn chunked_bodies_decode_with_extensions_trailers_and_bare_lf() {
    let (data, trailers) =
        decode_in_steps(b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\n\r\n", 1024).unwrap();
    assert_eq!(data, b"hello world");
    assert_eq!(trailers, None);

    let (data, trailers) =
        decode_in_steps(b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n", 1024).unwrap();
    assert_eq!(data, b"abc");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-t"], "1");

    let (data, _) = decode_in_steps(b"A\nabcdefghij\n0\n\n", 1024).unwrap();
    assert_eq!(data, b"abcdefghij");
}

#[test]
fn malformed_chunked_bodies_are_errors() {
    let bad: &[&[u8]] = &[
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"\r\n",
        b"0\r\nbad trailer\r\n\r\n",
    ];
    for wire in bad {
        assert_eq!(
            decode_in_steps(wire, 1024).map(|_| ()),
            Err(WireError::Chunked),
            "{}",
            String::from_utf8_lossy(wire)
        );
    }
    let endless_line = [b'1'; 8]
        .iter()
        .chain([b';'; MAX_CHUNK_LINE].iter())
        .copied();
    let mut buf: BytesMut = endless_line.collect::<Vec<u8>>()[..].into();
    assert_eq!(
        ChunkedDecoder::default().decode(&mut buf, MAX),
        Err(WireError::Chunked)
    );
}

#[test]
fn bytes_after_the_last_chunk_stay_in_the_buffer() {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\nHTTP/1.1"[..]);
    assert_eq!(
        decoder.decode(&mut buf, MAX),
        Ok(Chunk::Data(Bytes::from_static(b"ok")))
    );
    assert_eq!(decoder.decode(&mut buf, MAX), Ok(Chunk::End(None)));
    assert_eq!(&buf[..], b"HTTP/1.1");
}

fn encode_chunked(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

proptest! {
    #[test]
    fn any_chunking_read_in_any_steps_decodes_to_the_same_bytes(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
        step in 1usize..64,
    ) {
        let wire = encode_chunked(&chunks);
        let (data, trailers) = decode_in_steps(&wire, step).unwrap();
        prop_assert_eq!(data, chunks.concat());
        prop_assert_eq!(trailers, None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(wire in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_response_head(&wire, false, MAX);
        let mut buf = BytesMut::from(&wire[..]);
        let mut decoder = ChunkedDecoder::default();
        for _ in 0..wire.len() + 2 {
            match decoder.decode(&mut buf, MAX) {
                Ok(Chunk::Data(_)) => {}
                _ => break,
            }
        }
    }
}

#[test]
fn hop_by_hop_fields_decide_framing_but_are_not_passed_on() {
    let parsed = head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-conn-only\r\nKeep-Alive: timeout=5\r\nx-conn-only: 1\r\nTransfer-Encoding: chunked\r\nx-app: 2\r\n\r\n");
    assert_eq!(parsed.framing, Framing::Chunked);
    assert!(parsed.reusable);
    let mut names: Vec<&str> = parsed.headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["x-app"]);

    let parsed = head(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n");
    assert!(!parsed.reusable);
    assert_eq!(
        parsed.headers.len(),
        1,
        "Content-Length is end to end: {:?}",
        parsed.headers
    );
}
