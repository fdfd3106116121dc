//! Any bytes as an upstream's answer to the inline HTTP/1.1 client: the response head parser,
//! then the body framing it picked (the chunked decoder fed in uneven pieces). Must never panic,
//! never claim more bytes than it was given, and decode the same data whatever the pieces.
#![no_main]

use bytes::BytesMut;
use capstan_ingress::http1::{Chunk, ChunkedDecoder, Framing, Parsed, parse_response_head};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 16 * 1024;

/// The chunked body in `wire`, fed `step` bytes at a time: its data, or `None` if malformed or
/// unfinished.
fn decode(wire: &[u8], step: usize) -> Option<Vec<u8>> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let (mut data, mut fed) = (Vec::new(), 0);
    loop {
        match decoder.decode(&mut buf, MAX).ok()? {
            Chunk::Data(bytes) => {
                assert!(!bytes.is_empty(), "no empty data frames");
                data.extend_from_slice(&bytes);
            }
            Chunk::End(_) => return Some(data),
            Chunk::NeedMore if fed == wire.len() => return None,
            Chunk::NeedMore => {
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let step = usize::from(flags >> 1).max(1);
    let Ok(Parsed::Complete { head, len }) = parse_response_head(wire, head_request, MAX) else {
        return;
    };
    assert!(len <= wire.len(), "the head is within the input");
    if head_request {
        assert_eq!(head.framing, Framing::Empty, "HEAD responses have no body");
    }
    if head.framing == Framing::Chunked {
        let body = &wire[len..];
        let whole = decode(body, body.len().max(1));
        let pieces = decode(body, step);
        assert_eq!(whole, pieces, "the same data however it arrives");
        if let Some(decoded) = whole {
            assert!(decoded.len() <= body.len());
        }
    }
});
