//! The L4 data plane: Service frontends (ClusterIPs, NodePorts, external and LoadBalancer IPs,
//! standalone listen addresses), endpoint selection and TCP relaying.
//!
//! Owns: the listener set reconciled against each snapshot ([`run_listeners`]), the node's
//! traffic capture ([`capture`]: nftables redirects of VIPs to those listeners), the per-connection
//! TCP pipeline (load snapshot → [`balance::choose`] → connect with timeout and retry → relay with
//! half-close and idle timeout), UDP flows (a flow per client address, idle expiry, re-balanced
//! when its endpoint stops being eligible), passive health (ejection with backoff), and keeping
//! clients' source addresses to endpoints ([`source`], with `--preserve-source-ip`), the kernel
//! data path ([`kernel`]), and deleting stale UDP conntrack entries over ctnetlink (`conntrack`).
//!
//! Must not import: `catalog`, the sources, or anything Kubernetes. It reads only the compiled
//! [`capstan_table::ProxyTable`] from the snapshot, once per connection, without locks.

pub mod balance;
pub mod capture;
mod clock;
mod connection;
mod conntrack;
mod error;
pub mod kernel;
mod listen;
mod relay;
pub mod source;
mod udp;
mod workers;

pub use capstan_sockets::PortLock;
pub use capture::{Capture, CaptureMode, CaptureSettings, Redirect};
pub use clock::{now_ms, now_us};
pub use error::ProxyError;
pub use listen::{ListenerState, ListenerStatus, bind_all, run_listeners};
pub use workers::{Workers, raise_open_files_limit};
