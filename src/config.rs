//! The command line: every flag also settable from a `CAPSTAN_*` environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Capstan: one node agent for Service load balancing (kube-proxy), and later cluster DNS and
/// ingress, fed by Kubernetes manifests and `capstan.yaml` files.
#[derive(Debug, Parser)]
#[command(name = "capstan", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run(Box<RunArgs>),
    /// Load and compile the sources once, print what would be served, and exit (non-zero if any
    /// file is invalid).
    Check(SourceArgs),
}

/// Where desired state comes from.
#[derive(Clone, Debug, Default, Args)]
pub struct SourceArgs {
    /// Directory of Kubernetes manifests (Service, EndpointSlice; other kinds are skipped).
    /// Repeatable; read recursively, watched for changes.
    #[arg(
        long = "manifests",
        value_name = "DIR",
        env = "CAPSTAN_MANIFESTS",
        value_delimiter = ','
    )]
    pub manifests: Vec<PathBuf>,
    /// Capstan's own compact config file (see README: "capstan.yaml").
    #[arg(long, value_name = "FILE", env = "CAPSTAN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `capstan run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Admin endpoint: /healthz, /readyz, /metrics, /debug/snapshot.
    #[arg(
        long,
        value_name = "ADDR",
        env = "CAPSTAN_ADMIN",
        default_value = "127.0.0.1:9901"
    )]
    pub admin: SocketAddr,
    /// This node's name, for internalTrafficPolicy/externalTrafficPolicy: Local.
    #[arg(long, value_name = "NAME", env = "CAPSTAN_NODE_NAME")]
    pub node_name: Option<String>,
    /// Addresses NodePorts listen on (comma-separated). Default: all addresses.
    #[arg(
        long,
        value_name = "IP,...",
        env = "CAPSTAN_NODEPORT_ADDRESSES",
        value_delimiter = ','
    )]
    pub nodeport_addresses: Vec<IpAddr>,
    /// Load-balancing policy for Services that do not choose one: random, round-robin,
    /// least-connections.
    #[arg(
        long,
        value_name = "POLICY",
        env = "CAPSTAN_BALANCE",
        default_value = "random"
    )]
    pub balance: String,
    /// Time allowed to connect to an endpoint before trying another.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// A connection with no traffic in either direction for this long is closed.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// A UDP flow with no datagram either way for this long is forgotten (conntrack's UDP
    /// timeout); its client's next datagram is balanced afresh.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_UDP_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub udp_idle_timeout: Duration,
    /// First ejection period of an endpoint whose connect failed; doubles per consecutive failure.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_EJECT_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub eject_backoff: Duration,
    /// Longest ejection period.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_EJECT_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub eject_backoff_max: Duration,
    /// On SIGTERM/SIGINT, how long open connections may take to finish.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Log filter (RUST_LOG syntax), e.g. info or capstan_proxy=debug.
    #[arg(
        long,
        value_name = "FILTER",
        env = "CAPSTAN_LOG",
        default_value = "info"
    )]
    pub log: String,
}
