//! Capstan, the node agent: sources → publisher → snapshot → planes.
//!
//! Owns: the command line ([`config`]), the sources ([`source`]: the Kubernetes API, Kubernetes
//! manifests and `capstan.yaml` on disk, the Docker engine), the single-writer [`publish`] step, the admin endpoint
//! ([`admin`]), kube-proxy's HTTP endpoints ([`kube_proxy`]), telemetry, and [`run`], which wires
//! them with the planes and can be used in-process.
//!
//! May import every workspace crate. Kubernetes and Docker API types never leave [`source`].

pub mod admin;
pub mod config;
mod conntrack_sysctl;
mod coredns;
mod error;
pub mod gateway_status;
pub mod kube_proxy;
pub mod publish;
pub mod resolv;
pub mod source;
pub mod telemetry;

use std::sync::Arc;

use capstan_catalog::{
    Catalog, CompileOptions, DnsOptions, GatewayOptions, IngressOptions, compile,
};
use capstan_dns::{CacheConfig, DnsConfig, DnsMetrics, ForwardConfig, Forwarder, Handler};
use capstan_ingress::{GatewayBinds, GatewayWatch, IngressConfig, IngressMetrics};
use capstan_proxy::kernel::{Datapath, KernelSettings};
use capstan_proxy::source::Prefix;
use capstan_proxy::{
    CaptureMode, CaptureSettings, ListenerStatus, PortLock, Workers, run_listeners,
};
use capstan_table::{BalancePolicy, Generation, SnapshotHandle, Timeouts};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use error::{Error, Errors};

use crate::admin::AdminState;
use crate::config::{RunArgs, SourceArgs};
use crate::conntrack_sysctl::ConntrackSettings;
use crate::kube_proxy::SyncClock;
use crate::publish::Publisher;
use crate::source::{DockerSource, FileSources, KubeSource, NodeFacts, SourceStatus};
use crate::telemetry::{DnsCollector, IngressCollector, Metrics, ProxyCollector};

/// Runs the agent until `shutdown` is cancelled, then drains connections up to the deadline.
/// Invalid input at startup is an error; later it is logged, counted and kept out.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let mut options = compile_options(&args)?;
    let open_files = capstan_proxy::raise_open_files_limit();
    info!(limit = ?open_files, "open files");
    let snapshots = SnapshotHandle::default();
    let (listener_status_tx, listener_status) = watch::channel(ListenerStatus::default());
    let dns_metrics = Arc::new(DnsMetrics::default());
    let ingress_metrics = Arc::new(IngressMetrics::default());
    let ingress_config = ingress_config(&args)?;
    let forwarder = Arc::new(Forwarder::new(
        forward_config(&args),
        args.dns.addr(),
        dns_metrics.clone(),
    ));
    let metrics = Arc::new(Metrics::new(
        ProxyCollector {
            snapshots: snapshots.clone(),
            listeners: listener_status.clone(),
            endpoint_series: args.endpoint_metrics,
        },
        DnsCollector {
            metrics: dns_metrics.clone(),
            forwarder: Some(forwarder.clone()),
        },
        IngressCollector {
            snapshots: snapshots.clone(),
            metrics: ingress_metrics.clone(),
        },
    ));
    let source_status = SourceStatus::default();
    let kube = match kube_config(&args) {
        Some(kubeconfig) => Some(
            KubeSource::connect(
                kubeconfig.as_deref(),
                source_status.clone(),
                metrics.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let node = match (&kube, &args.node_name) {
        (Some(kube), Some(node)) => {
            let facts = kube.node_facts(node).await;
            info!(node = %node, zone = ?facts.zone, pod_cidrs = ?facts.pod_cidrs, "this node");
            facts
        }
        _ => NodeFacts::default(),
    };
    if options.node_zone.is_none() {
        options.node_zone = node.zone.clone();
    }
    let capture = capture_settings(&args, kube.is_some(), &node.pod_cidrs)?;
    if capture.mode == CaptureMode::Nftables {
        // kube-proxy's conntrack settings: this agent owns the node's Service NAT now.
        conntrack_settings(&args).apply();
    }

    let admin = TcpListener::bind(args.admin)
        .await
        .map_err(|source| Error::Bind {
            what: "admin",
            addr: args.admin,
            source,
        })?;
    let admin_addr = admin.local_addr().map_err(|source| Error::Io {
        what: "admin local address",
        source,
    })?;
    info!(addr = %admin_addr, "admin listening");
    let (gateway_binds_tx, gateway_binds) = watch::channel(GatewayBinds::default());
    let admin_state = AdminState {
        gateway_binds,
        gateway_controller: args.gateway_controller.clone(),
        snapshots: snapshots.clone(),
        listeners: listener_status.clone(),
        sources: source_status.clone(),
        metrics: metrics.clone(),
        dns: args.dns.addr().map(|_| forwarder.clone()),
        kube: kube.as_ref().map(KubeSource::health),
    };
    tokio::spawn(admin::serve(admin, admin_state, shutdown.clone()));

    let docker_status = source_status.clone();
    let mut files = FileSources::new(
        &args.sources.manifests,
        args.sources.config.as_ref(),
        source_status,
        metrics.clone(),
    );
    let initial = files
        .initial()
        .await
        .map_err(|e| Error::Invalid(Errors(e)))?;

    let mut docker = args.docker.clone().map(|socket| {
        DockerSource::new(
            socket,
            args.docker_network.clone(),
            docker_status.clone(),
            metrics.clone(),
        )
    });
    let docker_initial = match &mut docker {
        Some(docker) => Some(docker.initial().await),
        None => None,
    };

    let (updates_tx, updates) = mpsc::channel(1024);
    let (generations_tx, generations) = watch::channel(Generation::default());
    let clock = Arc::new(SyncClock::default());
    start_kube_proxy_endpoints(&args, &snapshots, &generations, &clock, &metrics, &shutdown)
        .await?;
    let (arrivals_tx, arrivals) = watch::channel(None);
    tokio::spawn(observe_syncs(
        listener_status.clone(),
        arrivals,
        metrics.clone(),
    ));
    let publisher = Publisher {
        catalog: Catalog::default(),
        sources: files
            .ids()
            .into_iter()
            .chain(kube.iter().flat_map(|_| KubeSource::ids()))
            .chain(docker.iter().map(DockerSource::id))
            .collect(),
        options: options.clone(),
        snapshots: snapshots.clone(),
        generations: generations_tx,
        metrics: metrics.clone(),
        clock: clock.clone(),
        arrivals: arrivals_tx,
    };
    for update in initial.into_iter().chain(docker_initial) {
        let _ = updates_tx.send(update).await;
    }
    if let Some(docker) = docker {
        tokio::spawn(docker.watch(updates_tx.clone(), shutdown.clone()));
    }
    if let Some(kube) = &kube {
        kube.spawn(updates_tx.clone(), &shutdown);
        kube.publish_gateway_status(
            args.gateway_controller.clone(),
            snapshots.clone(),
            generations.clone(),
            &shutdown,
        );
        if let Some(node) = &args.node_name {
            kube.watch_node(node.clone(), clock.clone(), &shutdown);
        }
        if !args.publish_status_address.is_empty() {
            kube.publish_ingress_status(
                args.publish_status_address.clone(),
                snapshots.clone(),
                generations.clone(),
                &shutdown,
            );
        }
    } else if !args.publish_status_address.is_empty() {
        warn!("--publish-status-address needs a Kubernetes source; ignored");
    }
    tokio::spawn(publisher.run(updates));

    // One Capstan per port: the DNS and ingress sockets use SO_REUSEPORT, which alone would let
    // a second agent share them silently. Held until the process ends.
    let _port_locks = lock_ports(&args, &ingress_config)?;
    let workers = Arc::new(Workers::per_core().map_err(|source| Error::Io {
        what: "start proxy worker threads",
        source,
    })?);
    let _ = telemetry::kube_proxy::WORKER_RUNTIMES.set(workers.handles().to_vec());
    if let Some(listen) = args.dns.addr() {
        let config = DnsConfig {
            listen,
            zones: std::iter::once(options.dns.cluster_domain.clone())
                .chain(options.dns.standalone_zone.clone())
                .collect(),
        };
        let handler = Arc::new(Handler::new(
            snapshots.clone(),
            config.zones.clone(),
            forwarder.clone(),
            dns_metrics.clone(),
        ));
        let addr = capstan_dns::serve(&config, workers.handles(), handler, &shutdown)?;
        info!(%addr, upstreams = ?forwarder.upstreams().iter().map(|u| u.addr).collect::<Vec<_>>(), "dns listening");
        if let Some(metrics_addr) = args.dns_metrics.addr() {
            let registry = Arc::new(telemetry::coredns::coredns_registry(
                telemetry::coredns::CoreDnsCollector {
                    metrics: dns_metrics,
                    forwarder: Some(forwarder.clone()),
                    server: format!("dns://{addr}"),
                    family: if addr.is_ipv4() { "1" } else { "2" },
                },
            ));
            let listener = TcpListener::bind(metrics_addr)
                .await
                .map_err(|source| Error::Bind {
                    what: "dns metrics",
                    addr: metrics_addr,
                    source,
                })?;
            let local = listener.local_addr().unwrap_or(metrics_addr);
            info!(addr = %local, "dns metrics listening");
            tokio::spawn(coredns::serve(
                listener,
                registry,
                clock.clone(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(forwarder.clone().probe_down_upstreams(shutdown.clone()));
    }
    tokio::spawn(capstan_ingress::health::run(
        snapshots.clone(),
        shutdown.clone(),
    ));
    let connections = TaskTracker::new();
    // Always on: with `--http off --https off` only Gateway API listeners (if any) are served.
    {
        let bound = capstan_ingress::serve(
            ingress_config,
            workers.handles(),
            snapshots.clone(),
            GatewayWatch {
                generations: generations.clone(),
                binds: gateway_binds_tx,
            },
            ingress_metrics,
            &shutdown,
            &connections,
        )?;
        let show =
            |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        info!(http = %show(bound.http), https = %show(bound.https), "ingress listening");
    }
    info!(capture = ?capture.mode, datapath = ?capture.datapath, preserve_source_ip = ?capture.preserve_source, "service capture");
    let listeners = tokio::spawn(run_listeners(
        workers.clone(),
        snapshots.clone(),
        generations,
        listener_status_tx,
        capture,
        shutdown.clone(),
        connections.clone(),
    ));
    let watch_shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) = files.watch(updates_tx, watch_shutdown).await {
            error!(%error, "file watching stopped; SIGHUP and changes will not reload");
        }
    });

    shutdown.cancelled().await;
    let _ = listeners.await;
    connections.close();
    info!(open = connections.len(), deadline = ?args.drain_timeout, "draining connections");
    if tokio::time::timeout(args.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "drain deadline passed; closing the rest"
        );
    }
    info!("stopped");
    Ok(())
}

/// Feeds kube-proxy's sync metrics from the listener loop's reports: every sync's duration and
/// time, and for each published change, the time until the rules serving it are in force.
async fn observe_syncs(
    mut status: watch::Receiver<ListenerStatus>,
    arrivals: watch::Receiver<Option<(Generation, std::time::Instant)>>,
    metrics: Arc<Metrics>,
) {
    let (mut seen_syncs, mut seen_failures, mut observed) = (0, 0, None);
    while status.changed().await.is_ok() {
        let (syncs, last_sync, full, failures, applied) = {
            let status = status.borrow_and_update();
            let s = &*status;
            (
                s.syncs,
                s.last_sync,
                s.last_sync_full,
                s.sync_failures,
                s.applied,
            )
        };
        let kube_proxy = &metrics.kube_proxy;
        kube_proxy
            .sync_failures
            .inc_by(failures.saturating_sub(seen_failures));
        seen_failures = failures;
        if syncs > seen_syncs {
            seen_syncs = syncs;
            kube_proxy.sync_seconds.observe(last_sync.as_secs_f64());
            let split = if full {
                &kube_proxy.full_sync_seconds
            } else {
                &kube_proxy.partial_sync_seconds
            };
            split.observe(last_sync.as_secs_f64());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            kube_proxy.last_sync.set(now);
        }
        let arrival = *arrivals.borrow();
        if let (Some(applied), Some((generation, arrived))) = (applied, arrival)
            && applied >= generation
            && observed != Some(generation)
        {
            observed = Some(generation);
            kube_proxy
                .programming_seconds
                .observe(arrived.elapsed().as_secs_f64());
        }
    }
}

/// Loads and compiles the sources once: `capstan check`. Returns a human summary.
pub async fn check(args: &SourceArgs) -> Result<String, Error> {
    let metrics = Arc::new(Metrics::new(
        ProxyCollector {
            snapshots: SnapshotHandle::default(),
            listeners: watch::channel(ListenerStatus::default()).1,
            endpoint_series: 0,
        },
        DnsCollector::default(),
        IngressCollector::default(),
    ));
    let mut files = FileSources::new(
        &args.manifests,
        args.config.as_ref(),
        SourceStatus::default(),
        metrics,
    );
    let updates = files
        .initial()
        .await
        .map_err(|e| Error::Invalid(Errors(e)))?;
    let mut catalog = Catalog::default();
    for update in updates {
        catalog.apply(update);
    }
    let snapshot = compile(&catalog, None, &CompileOptions::default(), Generation(1));
    let mut out = String::new();
    for port in snapshot.proxy.ports.values() {
        let frontends: Vec<String> = port.frontends.iter().map(|(f, _)| f.to_string()).collect();
        out.push_str(&format!(
            "{}: {} endpoint(s), {} eligible, on {}\n",
            port.key,
            port.endpoints.len(),
            port.internal.endpoints.len(),
            if frontends.is_empty() {
                "no frontend".to_owned()
            } else {
                frontends.join(", ")
            },
        ));
    }
    out.push_str(&gateway_status::status_lines(&snapshot.gateway));
    for problem in snapshot.problems.iter() {
        out.push_str(&format!("problem: {problem}\n"));
    }
    Ok(out)
}

/// kube-proxy's `--healthz` and `--metrics` servers and the `healthCheckNodePort` servers.
async fn start_kube_proxy_endpoints(
    args: &RunArgs,
    snapshots: &SnapshotHandle,
    generations: &watch::Receiver<Generation>,
    clock: &Arc<SyncClock>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { what, addr, source })
    };
    if let Some(addr) = args.healthz.addr() {
        let listener = bind("healthz", addr).await?;
        let local = listener.local_addr().unwrap_or(addr);
        info!(addr = %local, "healthz listening");
        tokio::spawn(kube_proxy::serve_healthz(
            listener,
            clock.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(addr) = args.metrics.addr() {
        let listener = bind("metrics", addr).await?;
        let local = listener.local_addr().unwrap_or(addr);
        info!(addr = %local, "metrics listening");
        tokio::spawn(kube_proxy::serve_metrics(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(kube_proxy::serve_health_check_node_ports(
        snapshots.clone(),
        generations.clone(),
        args.nodeport_addresses.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

/// The kubeconfig to use (`Some(None)`: in-cluster), or `None` when Kubernetes is not a source.
fn kube_config(args: &RunArgs) -> Option<Option<std::path::PathBuf>> {
    match &args.kubeconfig {
        Some(path) => Some(Some(path.clone())),
        None if args.sources.manifests.is_empty()
            && args.sources.config.is_none()
            && args.docker.is_none()
            && KubeSource::in_cluster() =>
        {
            Some(None)
        }
        None => None,
    }
}

fn compile_options(args: &RunArgs) -> Result<CompileOptions, Error> {
    let balance = source::parse_balance(&args.balance).map_err(|reason| Error::Convert {
        kind: "flag",
        name: "--balance".into(),
        reason,
    })?;
    Ok(CompileOptions {
        node_name: args.node_name.clone(),
        node_zone: args.node_zone.clone(),
        node_port_addresses: args.nodeport_addresses.clone(),
        balance,
        timeouts: Timeouts {
            connect: args.connect_timeout,
            idle: args.idle_timeout,
            eject_base: args.eject_backoff,
            eject_max: args.eject_backoff_max.max(args.eject_backoff),
            udp_idle: args.udp_idle_timeout,
        },
        dns: DnsOptions {
            cluster_domain: args
                .cluster_domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            standalone_zone: Some(
                args.standalone_zone
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            ),
            standalone_addresses: if args.standalone_address.is_empty() {
                vec![resolv::primary_address()]
            } else {
                args.standalone_address.clone()
            },
            ttl: u32::try_from(args.dns_ttl.as_secs()).unwrap_or(u32::MAX),
        },
        ingress: IngressOptions {
            controller: args.ingress_controller.clone(),
            default_certificate: args.default_certificate.clone(),
        },
        gateway: GatewayOptions {
            controller: args.gateway_controller.clone(),
            addresses: args.gateway_addresses,
            node_addresses: vec![resolv::primary_address()],
        },
        proxy_name: args.proxy_name.clone(),
    })
}

/// `--capture` (by default `nftables` with a Kubernetes source, `bind` otherwise), and the pod
/// ranges: `--preserve-source-ip` (which only the nftables capture can route replies for) and
/// `--cluster-cidr`, both defaulting to this Node's `spec.podCIDRs` (kube-proxy's
/// `--detect-local-mode=NodeCIDR`) with the nftables capture.
fn capture_settings(
    args: &RunArgs,
    kube: bool,
    node_pod_cidrs: &[Prefix],
) -> Result<CaptureSettings, Error> {
    let default = if kube {
        CaptureMode::Nftables
    } else {
        CaptureMode::Bind
    };
    let mode = args.capture.unwrap_or(default);
    if !args.preserve_source_ip.is_empty() && mode != CaptureMode::Nftables {
        return Err(Error::Convert {
            kind: "flag",
            name: "--preserve-source-ip".into(),
            reason: "needs --capture nftables, whose table routes the replies back".into(),
        });
    }
    let first_given = |lists: &[&[Prefix]]| {
        lists
            .iter()
            .find(|list| !list.is_empty())
            .map_or_else(Vec::new, |list| list.to_vec())
    };
    let node_pods: &[Prefix] = if mode == CaptureMode::Nftables {
        node_pod_cidrs
    } else {
        &[]
    };
    let preserve_source = first_given(&[&args.preserve_source_ip, node_pods]);
    let pod_cidrs = first_given(&[&args.cluster_cidr, &args.preserve_source_ip, node_pods]);
    Ok(CaptureSettings {
        mode,
        preserve_source,
        node_name: args.node_name.clone(),
        datapath: args.l4_datapath.unwrap_or(Datapath::Kernel),
        kernel: KernelSettings {
            pod_cidrs,
            cluster_dns: cluster_dns_service(args),
            programmer: args.kernel_programmer,
        },
        cleanup_on_exit: args.cleanup_on_exit,
    })
}

fn conntrack_settings(args: &RunArgs) -> ConntrackSettings {
    ConntrackSettings {
        max_per_core: args.conntrack_max_per_core,
        min: args.conntrack_min,
        tcp_timeout_established: args.conntrack_tcp_timeout_established,
        tcp_timeout_close_wait: args.conntrack_tcp_timeout_close_wait,
        tcp_be_liberal: args.conntrack_tcp_be_liberal,
        udp_timeout: args.conntrack_udp_timeout,
        udp_timeout_stream: args.conntrack_udp_timeout_stream,
    }
}

/// The locks of the DNS and ingress addresses (see [`PortLock`]).
fn lock_ports(args: &RunArgs, ingress: &IngressConfig) -> Result<Vec<PortLock>, Error> {
    let wanted = [
        ("udp", args.dns.addr()),
        ("tcp", args.dns.addr()),
        ("tcp", ingress.http),
        ("tcp", ingress.https),
    ];
    let mut locks = Vec::new();
    for (protocol, addr) in wanted {
        if let Some(addr) = addr {
            locks.extend(
                PortLock::acquire(protocol, addr).map_err(capstan_proxy::ProxyError::from)?,
            );
        }
    }
    Ok(locks)
}

/// `--cluster-dns-service`, when this node's DNS server can answer its ClusterIPs: listening on
/// the wildcard address, port 53, so an address added to the node reaches it.
fn cluster_dns_service(args: &RunArgs) -> Option<capstan_table::ServiceKey> {
    let service = args.cluster_dns_service.0.clone()?;
    match args.dns.addr() {
        Some(listen) if listen.ip().is_unspecified() && listen.port() == 53 => Some(service),
        listen => {
            info!(dns = ?listen, %service, "cluster DNS Service not answered locally: --dns is not on the wildcard address, port 53");
            None
        }
    }
}

fn ingress_config(args: &RunArgs) -> Result<IngressConfig, Error> {
    let balance = match args.ingress_balance.as_str() {
        "ewma" => BalancePolicy::PeakEwma,
        "round-robin" => BalancePolicy::RoundRobin,
        "random" => BalancePolicy::Random,
        "least-request" => BalancePolicy::LeastConnections,
        other => {
            return Err(Error::Convert {
                kind: "flag",
                name: "--ingress-balance".into(),
                reason: format!("{other:?} is not ewma, round-robin, random or least-request"),
            });
        }
    };
    Ok(IngressConfig {
        http: args.http.addr(),
        https: args.https.addr(),
        balance,
        header_timeout: args.http_header_timeout,
        idle_timeout: args.http_idle_timeout,
        request_timeout: args.http_request_timeout,
        connect_timeout: args.connect_timeout,
        max_header_bytes: args.http_max_header_bytes,
        max_headers: args.http_max_headers,
        access_log: args.access_log,
        trusted_proxies: args.trusted_proxies.clone().into(),
        proxy_protocol: args.proxy_protocol,
        tls_key_exchange: args.tls_key_exchange.clone(),
        tls_session_tickets: args.tls_session_tickets,
        ..IngressConfig::default()
    })
}

fn forward_config(args: &RunArgs) -> ForwardConfig {
    ForwardConfig {
        upstreams: if args.upstream.is_empty() {
            resolv::system_nameservers()
        } else {
            args.upstream.clone()
        },
        timeout: args.upstream_timeout,
        max_concurrent: args.dns_max_concurrent,
        cache: CacheConfig {
            capacity: args.dns_cache_size,
            min_ttl: args.dns_cache_min_ttl,
            max_ttl: args.dns_cache_max_ttl.max(args.dns_cache_min_ttl),
        },
    }
}
