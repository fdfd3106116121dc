//! The command line: every flag also settable from a `CAPSTAN_*` environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use capstan_proxy::CaptureMode;
use capstan_proxy::kernel::{Datapath, Programmer};
use capstan_proxy::source::Prefix;
use clap::{Args, Parser, Subcommand};

/// Capstan: one node agent for Service load balancing (kube-proxy), cluster DNS (CoreDNS) and
/// ingress, fed by the Kubernetes API, Kubernetes manifests and `capstan.yaml` files.
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
    /// Directory of Kubernetes manifests (Service, EndpointSlice, Ingress, IngressClass; other
    /// kinds are skipped).
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
    /// Watch this cluster's API server (Services, EndpointSlices, Ingresses, IngressClasses,
    /// kubernetes.io/tls Secrets). Without it, the in-cluster service account is used when
    /// running in a pod and no --manifests or --config is given.
    #[arg(long, value_name = "FILE", env = "CAPSTAN_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve running Docker containers by their `capstan.*` labels (the Docker provider, see
    /// README: "Docker labels"), read from the Docker Engine API on this unix socket and kept
    /// current from its events. `--docker` alone: `/var/run/docker.sock`.
    #[arg(
        long,
        value_name = "SOCKET",
        env = "CAPSTAN_DOCKER",
        num_args = 0..=1,
        default_missing_value = "/var/run/docker.sock"
    )]
    pub docker: Option<PathBuf>,
    /// With `--docker`: the Docker network whose container addresses are used (a container's
    /// `capstan.network` label overrides it). Default: a container's only network, else the
    /// first by name.
    #[arg(long, value_name = "NAME", env = "CAPSTAN_DOCKER_NETWORK")]
    pub docker_network: Option<String>,
    /// Proxy only Services whose `service.kubernetes.io/service-proxy-name` label is NAME
    /// (kube-proxy's filter). Default: only Services without that label.
    #[arg(long, value_name = "NAME", env = "CAPSTAN_PROXY_NAME")]
    pub proxy_name: Option<String>,
    /// Publish these addresses (IPs or hostnames, comma-separated) in
    /// `status.loadBalancer.ingress` of every Ingress Capstan serves. Needs a Kubernetes source
    /// and RBAC `patch` on `ingresses/status`. Give every node the same list. Default: off.
    #[arg(
        long,
        value_name = "ADDR,...",
        env = "CAPSTAN_PUBLISH_STATUS_ADDRESS",
        value_delimiter = ','
    )]
    pub publish_status_address: Vec<String>,
    /// This node's name, for internalTrafficPolicy/externalTrafficPolicy: Local.
    #[arg(long, value_name = "NAME", env = "CAPSTAN_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's zone, for topology-aware routing (EndpointSlice hints, trafficDistribution).
    /// Default with a Kubernetes source: the Node's `topology.kubernetes.io/zone` label.
    #[arg(long, value_name = "ZONE", env = "CAPSTAN_NODE_ZONE")]
    pub node_zone: Option<String>,
    /// Addresses NodePorts listen on (comma-separated). Default: all addresses.
    #[arg(
        long,
        value_name = "IP,...",
        env = "CAPSTAN_NODEPORT_ADDRESSES",
        value_delimiter = ','
    )]
    pub nodeport_addresses: Vec<IpAddr>,
    /// How Service VIPs reach Capstan: `bind` listens on each frontend's own address (VIPs that
    /// are local addresses); `nftables` redirects every frontend with a specific address
    /// (ClusterIPs, external and LoadBalancer IPs) to Capstan with one nftables table it owns
    /// (needs NET_ADMIN, `nft`, and `conntrack` for UDP) and binds NodePorts; `off` serves no
    /// Service frontends (DNS and ingress only).
    /// Default: `nftables` with a Kubernetes source, `bind` otherwise.
    #[arg(long, value_name = "MODE", env = "CAPSTAN_CAPTURE", value_parser = parse_capture)]
    pub capture: Option<CaptureMode>,
    /// With `--capture nftables`: TCP connections and UDP flows to captured VIPs reach endpoints
    /// from the client's own address instead of the node's where the replies come back through
    /// this node: to endpoints on this node (`--node-name`) for any client, to others for clients
    /// in these ranges (the cluster's pod CIDRs, as kube-proxy's `--cluster-cidr`). A transparent
    /// socket, and a policy route for the replies; needs NET_ADMIN. Default in Kubernetes mode:
    /// this Node's `spec.podCIDRs` (kube-proxy's `--detect-local-mode=NodeCIDR`).
    #[arg(
        long,
        value_name = "CIDR,...",
        env = "CAPSTAN_PRESERVE_SOURCE_IP",
        value_delimiter = ','
    )]
    pub preserve_source_ip: Vec<Prefix>,
    /// Which data path carries Service traffic with `--capture nftables`: `kernel` translates
    /// connections to endpoints with nftables DNAT (kube-proxy's nftables mode: no byte passes
    /// through Capstan, clients' addresses are kept, established connections survive a restart);
    /// `userspace` redirects them to Capstan's own proxy. Services asking for a policy the
    /// kernel cannot do (`capstan.dev/load-balancer: least-connections` or `round-robin`) stay
    /// in user space either way. Default: `kernel` with `--capture nftables`.
    #[arg(long, value_name = "PATH", env = "CAPSTAN_L4_DATAPATH", value_parser = parse_datapath)]
    pub l4_datapath: Option<Datapath>,
    /// The pod ranges (kube-proxy's `--cluster-cidr`), for the kernel data path: ClusterIP
    /// traffic from outside them is masqueraded, pod traffic to `externalTrafficPolicy: Local`
    /// external addresses goes to every endpoint. Default: the `--preserve-source-ip` ranges, or
    /// else this Node's `spec.podCIDRs` (kube-proxy's `--detect-local-mode=NodeCIDR`).
    #[arg(
        long,
        value_name = "CIDR,...",
        env = "CAPSTAN_CLUSTER_CIDR",
        value_delimiter = ','
    )]
    pub cluster_cidr: Vec<Prefix>,
    /// The cluster DNS Service (`NAMESPACE/NAME`, or `off`). On the kernel data path its
    /// ClusterIPs on port 53 (UDP and TCP) are answered by this node's DNS server, untracked, as
    /// NodeLocal DNSCache does: pods keep resolving through the kube-dns address with CoreDNS
    /// removed. Needs `--dns` on the wildcard address, port 53.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME|off",
        env = "CAPSTAN_CLUSTER_DNS_SERVICE",
        default_value = "kube-system/kube-dns",
        value_parser = parse_service_name
    )]
    pub cluster_dns_service: ServiceName,
    /// How the kernel data path's table is written: `netlink` sends nf_tables batches from
    /// Capstan itself (the default: no process, no parsing, no read-back of the table); `nft`
    /// runs the same transactions as text through `nft -f -` (to compare, or to debug).
    #[arg(
        long,
        value_name = "netlink|nft",
        env = "CAPSTAN_KERNEL_PROGRAMMER",
        default_value = "netlink",
        value_parser = parse_programmer
    )]
    pub kernel_programmer: Programmer,
    /// On a clean exit, empty the kernel data path's nftables table (as `kube-proxy --cleanup`).
    /// By default the rules stay, as kube-proxy's do, so Services keep working while the agent
    /// is upgraded or restarted: the next Capstan replaces them in one transaction. Emptying
    /// them also cut established connections in the namespace tests.
    #[arg(long, env = "CAPSTAN_CLEANUP_ON_EXIT")]
    pub cleanup_on_exit: bool,
    /// kube-proxy's `--conntrack-max-per-core`: with `--capture nftables`, `nf_conntrack_max` is
    /// set to this × CPUs (at least `--conntrack-min`); 0 leaves it alone.
    #[arg(
        long,
        value_name = "N",
        env = "CAPSTAN_CONNTRACK_MAX_PER_CORE",
        default_value_t = 32768
    )]
    pub conntrack_max_per_core: u64,
    /// kube-proxy's `--conntrack-min`.
    #[arg(
        long,
        value_name = "N",
        env = "CAPSTAN_CONNTRACK_MIN",
        default_value_t = 131_072
    )]
    pub conntrack_min: u64,
    /// kube-proxy's `--conntrack-tcp-timeout-established` (`nf_conntrack_tcp_timeout_established`);
    /// 0 leaves it alone.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_CONNTRACK_TCP_TIMEOUT_ESTABLISHED", default_value = "24h", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_established: Duration,
    /// kube-proxy's `--conntrack-tcp-timeout-close-wait` (`nf_conntrack_tcp_timeout_close_wait`);
    /// 0 leaves it alone.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_CONNTRACK_TCP_TIMEOUT_CLOSE_WAIT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub conntrack_tcp_timeout_close_wait: Duration,
    /// kube-proxy's `--conntrack-tcp-be-liberal` (`nf_conntrack_tcp_be_liberal`: out-of-window
    /// packets are not marked INVALID).
    #[arg(long, env = "CAPSTAN_CONNTRACK_TCP_BE_LIBERAL")]
    pub conntrack_tcp_be_liberal: bool,
    /// kube-proxy's `--conntrack-udp-timeout` (`nf_conntrack_udp_timeout`); 0 leaves it alone.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_CONNTRACK_UDP_TIMEOUT", default_value = "0s", value_parser = humantime::parse_duration)]
    pub conntrack_udp_timeout: Duration,
    /// kube-proxy's `--conntrack-udp-timeout-stream` (`nf_conntrack_udp_timeout_stream`); 0
    /// leaves it alone.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_CONNTRACK_UDP_TIMEOUT_STREAM", default_value = "0s", value_parser = humantime::parse_duration)]
    pub conntrack_udp_timeout_stream: Duration,
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
    /// First ejection period of an endpoint whose connect failed (or that outlier detection
    /// ejected); doubles per consecutive ejection.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_EJECT_BACKOFF", default_value = "1s", value_parser = humantime::parse_duration)]
    pub eject_backoff: Duration,
    /// Longest ejection period.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_EJECT_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub eject_backoff_max: Duration,
    /// On SIGTERM/SIGINT, how long open connections may take to finish.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// kube-proxy's health endpoint (`/healthz`, `/livez`), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "CAPSTAN_HEALTHZ", default_value = "0.0.0.0:10256", value_parser = parse_listen)]
    pub healthz: Listen,
    /// kube-proxy's metrics endpoint (`/metrics`, `/proxyMode`), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "CAPSTAN_METRICS", default_value = "127.0.0.1:10249", value_parser = parse_listen)]
    pub metrics: Listen,
    /// CoreDNS's metrics endpoint (`/metrics` with CoreDNS's names, `/health`, `/ready`), or
    /// `off`; served while cluster DNS is on.
    #[arg(long, value_name = "ADDR|off", env = "CAPSTAN_DNS_METRICS", default_value = "0.0.0.0:9153", value_parser = parse_listen)]
    pub dns_metrics: Listen,
    /// Cluster DNS listen address (UDP and TCP), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "CAPSTAN_DNS", default_value = "0.0.0.0:53", value_parser = parse_listen)]
    pub dns: Listen,
    /// The cluster domain answered authoritatively.
    #[arg(
        long,
        value_name = "DOMAIN",
        env = "CAPSTAN_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    /// Zone the capstan.yaml services are named in (`<service>.<zone>`).
    #[arg(
        long,
        value_name = "ZONE",
        env = "CAPSTAN_STANDALONE_ZONE",
        default_value = "capstan.internal"
    )]
    pub standalone_zone: String,
    /// What standalone services listening on 0.0.0.0 or [::] resolve to (repeatable). Default:
    /// this host's primary address (the source address of its default route).
    #[arg(
        long,
        value_name = "IP",
        env = "CAPSTAN_STANDALONE_ADDRESS",
        value_delimiter = ','
    )]
    pub standalone_address: Vec<IpAddr>,
    /// Upstream resolver for names outside Capstan's zones, IP or IP:PORT (repeatable). Default:
    /// the nameservers of /etc/resolv.conf.
    #[arg(
        long,
        value_name = "IP[:PORT]",
        env = "CAPSTAN_UPSTREAM",
        value_delimiter = ',',
        value_parser = parse_upstream
    )]
    pub upstream: Vec<SocketAddr>,
    /// TTL of the records Capstan answers authoritatively.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_DNS_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub dns_ttl: Duration,
    /// Time allowed for one upstream exchange before trying the next upstream.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_UPSTREAM_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// Forwarded queries in flight at most; more are answered REFUSED.
    #[arg(
        long,
        value_name = "N",
        env = "CAPSTAN_DNS_MAX_CONCURRENT",
        default_value = "1000"
    )]
    pub dns_max_concurrent: usize,
    /// Forwarded answers cached at most; 0 disables the cache.
    #[arg(
        long,
        value_name = "N",
        env = "CAPSTAN_DNS_CACHE_SIZE",
        default_value = "10000"
    )]
    pub dns_cache_size: usize,
    /// Cached answers live at least this long (shorter upstream TTLs are raised).
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_DNS_CACHE_MIN_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub dns_cache_min_ttl: Duration,
    /// Cached answers live at most this long.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_DNS_CACHE_MAX_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub dns_cache_max_ttl: Duration,
    /// Ingresses of IngressClasses with this `spec.controller` are served.
    #[arg(
        long,
        value_name = "NAME",
        env = "CAPSTAN_INGRESS_CONTROLLER",
        default_value = "capstan.dev/ingress"
    )]
    pub ingress_controller: String,
    /// Gateways of GatewayClasses with this `spec.controllerName` are served.
    #[arg(
        long,
        value_name = "NAME",
        env = "CAPSTAN_GATEWAY_CONTROLLER",
        default_value = "capstan.dev/gateway-controller"
    )]
    pub gateway_controller: String,
    /// Addresses for Gateways without `spec.addresses`: one each from this range, kept while the
    /// Gateway lives. Without it such Gateways listen on every address of the node.
    #[arg(long, value_name = "CIDR", env = "CAPSTAN_GATEWAY_ADDRESSES")]
    pub gateway_addresses: Option<ipnet::IpNet>,
    /// Plain HTTP ingress listener (HTTP/1.1 and h2c), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "CAPSTAN_HTTP", default_value = "0.0.0.0:80", value_parser = parse_listen)]
    pub http: Listen,
    /// TLS ingress listener (HTTP/1.1 and HTTP/2 by ALPN), or `off`.
    #[arg(long, value_name = "ADDR|off", env = "CAPSTAN_HTTPS", default_value = "0.0.0.0:443", value_parser = parse_listen)]
    pub https: Listen,
    /// `namespace/name` of the kubernetes.io/tls Secret served for unknown SNI names. Default: a
    /// self-signed certificate generated at startup.
    #[arg(
        long,
        value_name = "NAMESPACE/NAME",
        env = "CAPSTAN_DEFAULT_CERTIFICATE"
    )]
    pub default_certificate: Option<String>,
    /// Ingress load balancing: `ewma` (power of two choices on in-flight requests weighted by
    /// latency) or `round-robin`.
    #[arg(
        long,
        value_name = "POLICY",
        env = "CAPSTAN_INGRESS_BALANCE",
        default_value = "ewma"
    )]
    pub ingress_balance: String,
    /// Time a client has to send a complete request head, and longest idle time between
    /// HTTP/1.1 requests (slowloris protection).
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,
    /// An ingress connection with no bytes either way for this long is closed.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_HTTP_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Duration,
    /// Time an upstream has to start its response before the client gets 504.
    #[arg(long, value_name = "DURATION", env = "CAPSTAN_HTTP_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub http_request_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; larger ones get 431.
    #[arg(
        long,
        value_name = "BYTES",
        env = "CAPSTAN_HTTP_MAX_HEADER_BYTES",
        default_value = "32768"
    )]
    pub http_max_header_bytes: usize,
    /// Most request headers; more get 431.
    #[arg(
        long,
        value_name = "N",
        env = "CAPSTAN_HTTP_MAX_HEADERS",
        default_value = "100"
    )]
    pub http_max_headers: usize,
    /// Write one JSON line per ingress request to stdout.
    #[arg(long, env = "CAPSTAN_ACCESS_LOG")]
    pub access_log: bool,
    /// Peers trusted as proxies in front of the ingress (load balancers, CDNs): their
    /// `X-Forwarded-*`, `Forwarded` and `X-Request-Id` are kept and extended instead of replaced,
    /// and with `--proxy-protocol` they may send a PROXY header.
    #[arg(
        long,
        value_name = "CIDR,...",
        env = "CAPSTAN_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Accept a PROXY protocol v1 or v2 header on ingress connections from `--trusted-proxies`
    /// (optional per connection); the client address it names is the request's client.
    #[arg(long, env = "CAPSTAN_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// TLS key-exchange groups the HTTPS listener offers, in preference order (nginx's
    /// `ssl_ecdh_curve`, HAProxy's `curves`): X25519MLKEM768 (post-quantum hybrid), X25519,
    /// secp256r1 (P-256), secp384r1 (P-384).
    #[arg(
        long,
        value_name = "GROUP,...",
        env = "CAPSTAN_TLS_KEY_EXCHANGE",
        value_delimiter = ',',
        default_value = "X25519MLKEM768,X25519,secp256r1,secp384r1"
    )]
    pub tls_key_exchange: Vec<capstan_ingress::crypto::KeyExchange>,
    /// TLS 1.3 session tickets sent after each full handshake, for resumption from the
    /// in-memory session cache; 0 turns resumption off (every connection a full handshake).
    #[arg(
        long,
        value_name = "N",
        env = "CAPSTAN_TLS_SESSION_TICKETS",
        default_value = "2"
    )]
    pub tls_session_tickets: usize,
    /// Per-endpoint metric series (`capstan_proxy_endpoint_*`) for at most N endpoints, in
    /// Service order: 10,000 Services of 10 endpoints would otherwise be half a million series.
    /// The per-Service series are always there; `capstan_proxy_endpoint_series_omitted` counts
    /// the endpoints left out. 0 turns per-endpoint series off.
    #[arg(
        long,
        value_name = "N",
        env = "CAPSTAN_ENDPOINT_METRICS",
        default_value = "1000"
    )]
    pub endpoint_metrics: usize,
    /// Log filter (RUST_LOG syntax), e.g. info or capstan_proxy=debug.
    #[arg(
        long,
        value_name = "FILTER",
        env = "CAPSTAN_LOG",
        default_value = "info"
    )]
    pub log: String,
}

/// A listen address that can be turned off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl Listen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(addr) => Some(addr),
        }
    }
}

fn parse_capture(text: &str) -> Result<CaptureMode, String> {
    match text {
        "bind" => Ok(CaptureMode::Bind),
        "nftables" => Ok(CaptureMode::Nftables),
        "off" => Ok(CaptureMode::Off),
        _ => Err(format!("{text:?} is not nftables, bind or off")),
    }
}

fn parse_programmer(text: &str) -> Result<Programmer, String> {
    match text {
        "netlink" => Ok(Programmer::Netlink),
        "nft" => Ok(Programmer::Nft),
        other => Err(format!("`{other}`: expected netlink or nft")),
    }
}

fn parse_datapath(text: &str) -> Result<Datapath, String> {
    match text {
        "kernel" => Ok(Datapath::Kernel),
        "userspace" => Ok(Datapath::Userspace),
        _ => Err(format!("{text:?} is not kernel or userspace")),
    }
}

/// A Service named on the command line, or `off` (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceName(pub Option<capstan_table::ServiceKey>);

fn parse_service_name(text: &str) -> Result<ServiceName, String> {
    if text == "off" {
        return Ok(ServiceName(None));
    }
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(ServiceName(Some(capstan_table::ServiceKey::new(
                namespace, name,
            ))))
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME or off")),
    }
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen::Off);
    }
    text.parse()
        .map(Listen::At)
        .map_err(|_| format!("{text:?} is not IP:PORT or off"))
}

/// `IP` (port 53) or `IP:PORT`, IPv6 as `[IP]:PORT`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{text:?} is not IP or IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_default_to_port_53() {
        assert_eq!(
            parse_upstream("10.0.0.1"),
            Ok("10.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("10.0.0.1:5353"),
            Ok("10.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_upstream("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(parse_upstream("[::1]:54"), Ok("[::1]:54".parse().unwrap()));
        assert!(parse_upstream("example.com").is_err());
        assert_eq!(parse_listen("off"), Ok(Listen::Off));
        assert!(parse_listen("53").is_err());
        assert_eq!(parse_capture("nftables"), Ok(CaptureMode::Nftables));
        assert_eq!(parse_capture("bind"), Ok(CaptureMode::Bind));
        assert_eq!(parse_capture("off"), Ok(CaptureMode::Off));
        assert!(parse_capture("iptables").is_err());
        assert_eq!(parse_datapath("kernel"), Ok(Datapath::Kernel));
        assert_eq!(parse_datapath("userspace"), Ok(Datapath::Userspace));
        assert_eq!(parse_programmer("nft"), Ok(Programmer::Nft));
        assert!(parse_programmer("iptables").is_err());
        assert!(parse_datapath("ebpf").is_err());
        assert!("10.244.0.0/16".parse::<Prefix>().is_ok());
        assert!("fd00:244::/56".parse::<Prefix>().is_ok());
        assert!("10.244.0.0".parse::<Prefix>().is_err());
        assert!("10.244.0.0/33".parse::<Prefix>().is_err());
    }
}
