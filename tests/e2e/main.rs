//! End-to-end tests: the real `capstan` binary, real TCP backends and clients on loopback.

mod balance;
mod capture;
mod datapath_bench;
mod deploy;
mod dns;
mod dns_metrics;
mod dns_spec;
mod dns_support;
mod edge_policy;
mod files;
mod http_support;
mod ingress;
mod ingress_spec;
mod kernel;
mod kernel_rollout;
mod kernel_scale;
mod kube;
mod kube_proxy;
mod kube_scale;
mod lifecycle;
mod reload;
mod resilience;
mod resilience_support;
mod support;
mod udp;
mod upstream_tls;
