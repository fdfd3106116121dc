//! Netfilter netlink (`NETLINK_NETFILTER`): messages written into one buffer, sent as one
//! datagram, and their acknowledgements read back. This is the transport of nf_tables batches
//! (one transaction: `NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END`); what the
//! messages say (tables, chains, rules) is the caller's business.
//!
//! Only the last message of a batch asks for an acknowledgement: the kernel reports every
//! failing message anyway, after the whole batch (nfnetlink.c, `nfnetlink_rcv_batch`), so one
//! success ack ends a transaction without a hundred thousand acks to read.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use crate::SocketError;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`: a dump.
pub const NLM_F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL`.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND`.
pub const NLM_F_APPEND: u16 = 0x800;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// How long a transaction may take before it counts as lost (a full sync of a hundred
/// thousand rules commits in about a second).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Netlink messages written back to back into one buffer.
#[derive(Debug, Default)]
pub struct Messages {
    buf: Vec<u8>,
    seq: u32,
    /// The start of the message being written.
    open: Option<usize>,
    /// The start of the last message begun.
    last: usize,
}

impl Messages {
    pub fn new() -> Self {
        Self {
            buf: Vec::with_capacity(4096),
            seq: 0,
            open: None,
            last: 0,
        }
    }

    /// Starts a message: the netlink header and `struct nfgenmsg`. Returns its sequence number.
    pub fn begin(&mut self, msg_type: u16, flags: u16, family: u8, res_id: u16) -> u32 {
        debug_assert!(self.open.is_none(), "message left open");
        self.seq += 1;
        self.open = Some(self.buf.len());
        self.last = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.seq
    }

    /// Ends the message started last, writing its length.
    pub fn end(&mut self) {
        let start = self.open.take().expect("no message open");
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// One attribute, padded to four bytes.
    pub fn attr(&mut self, attr_type: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len() + align(len) - len, 0);
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, attr_type: u16, value: &str) {
        let start = self.buf.len();
        let len = 4 + value.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.buf.resize(start + align(len), 0);
    }

    /// A 32-bit attribute in network byte order (netfilter's convention).
    pub fn attr_u32(&mut self, attr_type: u16, value: u32) {
        self.attr(attr_type, &value.to_be_bytes());
    }

    /// A 64-bit attribute in network byte order.
    pub fn attr_u64(&mut self, attr_type: u16, value: u64) {
        self.attr(attr_type, &value.to_be_bytes());
    }

    /// Starts a nested attribute; returns where it starts, for [`Messages::nest_end`].
    pub fn nest_begin(&mut self, attr_type: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn nest_end(&mut self, start: usize) {
        let len = self.buf.len() - start;
        assert!(
            len <= usize::from(u16::MAX),
            "nested attribute of {len} bytes"
        );
        let len = len as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Sets `NLM_F_ACK` on the last message begun.
    fn ask_ack_of_last(&mut self) {
        let flags = &mut self.buf[self.last + 6..self.last + 8];
        let value = u16::from_ne_bytes([flags[0], flags[1]]) | NLM_F_ACK;
        flags.copy_from_slice(&value.to_ne_bytes());
    }

    pub fn last_seq(&self) -> u32 {
        self.seq
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// An nf_tables transaction being written: every message between the batch's begin and end
/// is applied by the kernel all together or not at all.
#[derive(Debug)]
pub struct Batch {
    messages: Messages,
    subsystem: u16,
    /// Messages between the begin and the end.
    count: usize,
}

impl Batch {
    /// A batch for a netfilter subsystem (`NFNL_SUBSYS_NFTABLES` = 10).
    pub fn new(subsystem: u16) -> Self {
        let mut messages = Messages::new();
        messages.begin(NFNL_MSG_BATCH_BEGIN, 0, 0, subsystem);
        messages.end();
        Self {
            messages,
            subsystem,
            count: 0,
        }
    }

    /// Starts a message of the subsystem (`msg` is the subsystem's own type number).
    pub fn begin(&mut self, msg: u16, flags: u16, family: u8) -> u32 {
        self.count += 1;
        self.messages
            .begin(self.subsystem << 8 | msg, flags, family, 0)
    }

    pub fn messages(&mut self) -> &mut Messages {
        &mut self.messages
    }

    /// Messages in the batch, not counting its begin and end.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Sends the batch on a socket of its own and waits for the kernel's verdict on it.
    pub fn commit(self) -> Result<(), SocketError> {
        let socket = NetfilterSocket::open(0)?;
        self.commit_on(&socket)
    }

    /// Sends the batch on `socket` and waits for the kernel's verdict on it. Reusing one
    /// socket matters: closing a netfilter socket waits for nf_tables to finish releasing the
    /// last transaction (an RCU grace period, 8 to 16 ms), which the kernel does not make the
    /// sender wait for otherwise. After an error, replies of the refused batch may still be
    /// queued: use a fresh socket.
    pub fn commit_on(mut self, socket: &NetfilterSocket) -> Result<(), SocketError> {
        if self.count == 0 {
            return Ok(());
        }
        // The last message asks for the one acknowledgement that ends the transaction.
        let last = self.messages.last_seq();
        self.messages.ask_ack_of_last();
        self.messages
            .begin(NFNL_MSG_BATCH_END, 0, 0, self.subsystem);
        self.messages.end();
        socket.fit(self.messages.len())?;
        socket.send(self.messages.bytes())?;
        socket.await_ack(last)
    }
}

/// One netfilter netlink socket.
#[derive(Debug)]
pub struct NetfilterSocket {
    fd: OwnedFd,
}

impl NetfilterSocket {
    /// Opens a socket able to send `message_bytes` in one datagram.
    pub fn open(message_bytes: usize) -> Result<Self, SocketError> {
        let failed = |step: &'static str| {
            move |errno: nix::Error| SocketError::Netlink {
                step,
                source: io::Error::from(errno),
            }
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(failed("open a netfilter netlink socket"))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(failed("bind it"))?;
        let socket = Self { fd };
        socket.fit(message_bytes)?;
        let fd = &socket.fd;
        // Room for the error of every message of a large failing batch.
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20));
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0),
        )
        .map_err(failed("set its timeout"))?;
        Ok(socket)
    }

    /// Grows the send buffer to hold `message_bytes` in one datagram: a batch is one datagram
    /// (nft sizes its buffer the same way).
    pub fn fit(&self, message_bytes: usize) -> Result<(), SocketError> {
        let wanted = message_bytes + 64 * 1024;
        if wanted > 200 * 1024 {
            setsockopt(&self.fd, sockopt::SndBufForce, &wanted)
                .or_else(|_| setsockopt(&self.fd, sockopt::SndBuf, &wanted))
                .map_err(|errno| SocketError::Netlink {
                    step: "size its send buffer",
                    source: io::Error::from(errno),
                })?;
        }
        Ok(())
    }

    pub fn send(&self, bytes: &[u8]) -> Result<(), SocketError> {
        let sent = send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()).map_err(|errno| {
            SocketError::Netlink {
                step: "send",
                source: io::Error::from(errno),
            }
        })?;
        if sent != bytes.len() {
            return Err(SocketError::Netlink {
                step: "send",
                source: io::Error::other(format!("{sent} of {} bytes sent", bytes.len())),
            });
        }
        Ok(())
    }

    /// Reads acknowledgements until the one for `last`; the first error reported for any
    /// message fails the whole transaction (the kernel has rolled it back).
    pub fn await_ack(&self, last: u32) -> Result<(), SocketError> {
        let mut first_error: Option<(u32, i32)> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.receive(&mut buf)?;
            for message in parse_messages(&buf[..n]) {
                let Some((seq, errno)) = message.ack() else {
                    continue;
                };
                if errno != 0 && first_error.is_none() {
                    first_error = Some((seq, errno));
                }
                // Errors come before the last message's own acknowledgement; a batch refused
                // as a whole is acknowledged at its begin (sequence 1).
                if seq == last || (errno != 0 && seq == 1) {
                    return match first_error {
                        None => Ok(()),
                        Some((seq, errno)) => Err(SocketError::Refused {
                            message: seq,
                            source: io::Error::from_raw_os_error(errno),
                        }),
                    };
                }
            }
        }
    }

    /// Reads one datagram (any number of messages).
    pub fn receive(&self, buf: &mut [u8]) -> Result<usize, SocketError> {
        recv(self.fd.as_raw_fd(), buf, MsgFlags::empty()).map_err(|errno| SocketError::Netlink {
            step: "receive",
            source: io::Error::from(errno),
        })
    }

    /// Sends one dump request and collects the payloads of every message of the reply
    /// (after the `nfgenmsg` header), until `NLMSG_DONE`.
    pub fn dump(&self, request: &Messages) -> Result<Vec<Vec<u8>>, SocketError> {
        self.send(request.bytes())?;
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = self.receive(&mut buf)?;
            for message in parse_messages(&buf[..n]) {
                match message.msg_type {
                    NLMSG_DONE => return Ok(replies),
                    NLMSG_ERROR => match message.ack() {
                        Some((_, 0)) | None => {}
                        Some((seq, errno)) => {
                            return Err(SocketError::Refused {
                                message: seq,
                                source: io::Error::from_raw_os_error(errno),
                            });
                        }
                    },
                    _ => replies.push(message.payload.get(NFGENMSG_LEN..).unwrap_or(&[]).to_vec()),
                }
            }
        }
    }
}

/// One received netlink message.
#[derive(Debug)]
pub struct Received<'a> {
    pub msg_type: u16,
    pub payload: &'a [u8],
}

impl Received<'_> {
    /// `(sequence number of the acknowledged message, errno)` of an `NLMSG_ERROR`.
    pub fn ack(&self) -> Option<(u32, i32)> {
        if self.msg_type != NLMSG_ERROR || self.payload.len() < 4 + NLMSG_HDRLEN {
            return None;
        }
        let error = i32::from_ne_bytes(self.payload[0..4].try_into().ok()?);
        let seq = u32::from_ne_bytes(self.payload[12..16].try_into().ok()?);
        Some((seq, -error))
    }
}

/// The messages of one datagram; a truncated tail is ignored.
pub fn parse_messages(buf: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().expect("4")) as usize;
        if len < NLMSG_HDRLEN || offset + len > buf.len() {
            break;
        }
        let msg_type = u16::from_ne_bytes(buf[offset + 4..offset + 6].try_into().expect("2"));
        out.push(Received {
            msg_type,
            payload: &buf[offset + NLMSG_HDRLEN..offset + len],
        });
        offset += align(len);
    }
    out
}

/// The attributes of a netlink payload: `(type without flags, value)`; a truncated tail is
/// ignored.
pub fn parse_attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[offset], buf[offset + 1]]) as usize;
        let attr_type = u16::from_ne_bytes([buf[offset + 2], buf[offset + 3]]) & 0x3fff;
        if len < 4 || offset + len > buf.len() {
            break;
        }
        out.push((attr_type, &buf[offset + 4..offset + len]));
        offset += align(len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_lengths_cover_their_children() {
        let mut messages = Messages::new();
        messages.begin(0x0a06, NLM_F_CREATE, 1, 0);
        messages.attr_str(1, "t");
        let nest = messages.nest_begin(4);
        messages.attr_u32(1, 7);
        messages.nest_end(nest);
        messages.end();
        let parsed = parse_messages(messages.bytes());
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].msg_type, 0x0a06);
        let attrs = parse_attrs(&parsed[0].payload[NFGENMSG_LEN..]);
        assert_eq!(attrs[0], (1, &b"t\0"[..]));
        assert_eq!(parse_attrs(attrs[1].1), vec![(1, &7u32.to_be_bytes()[..])]);
        assert_eq!(messages.len() % 4, 0);
    }

    #[test]
    fn only_the_last_message_of_a_batch_asks_for_an_ack() {
        let mut batch = Batch::new(10);
        for _ in 0..3 {
            batch.begin(0, NLM_F_CREATE, 1);
            batch.messages().attr_str(1, "table");
            batch.messages().end();
        }
        batch.messages.ask_ack_of_last();
        let flags: Vec<u16> = parse_messages(batch.messages.bytes())
            .iter()
            .map(|m| m.msg_type)
            .collect();
        assert_eq!(flags, vec![0x10, 0x0a00, 0x0a00, 0x0a00]);
        let acked: Vec<bool> = {
            let buf = batch.messages.bytes();
            let mut offset = 0;
            let mut out = Vec::new();
            while offset < buf.len() {
                let len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().unwrap()) as usize;
                let flags = u16::from_ne_bytes(buf[offset + 6..offset + 8].try_into().unwrap());
                out.push(flags & NLM_F_ACK != 0);
                offset += align(len);
            }
            out
        };
        assert_eq!(acked, vec![false, false, false, true]);
    }
}
