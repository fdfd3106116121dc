//! Socket mechanics the data planes share, below any notion of Services or names.
//!
//! Owns: answering UDP from the address a datagram was sent to ([`pktinfo`]: `IP_PKTINFO` /
//! `IPV6_RECVPKTINFO` on wildcard sockets), and one process per port ([`PortLock`]: sockets
//! bound with `SO_REUSEPORT` would otherwise be shared silently with a second agent), and the
//! netfilter netlink transport ([`netlink`]: nf_tables transactions and conntrack requests, as
//! bytes; what they mean belongs to the caller).
//!
//! Must not import: any workspace crate. `proxy` and `dns` import it (they may not import each
//! other).

mod error;
pub mod netlink;
pub mod pktinfo;
mod port_lock;

pub use error::SocketError;
pub use port_lock::PortLock;
