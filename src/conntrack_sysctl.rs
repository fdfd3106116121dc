//! The `nf_conntrack` settings kube-proxy makes on its node (cmd/kube-proxy/app/server_linux.go
//! and conntrack.go), made the same way when Capstan replaces it: the table sized to
//! `max(--conntrack-max-per-core × CPUs, --conntrack-min)` (and the hash table to a quarter of
//! it, only ever raised), established TCP entries kept 24 h and CLOSE_WAIT ones 1 h (the
//! kernel's 60 s CLOSE_WAIT cuts long half-closed Service connections). A value of zero leaves
//! that setting alone; a value already in place is not written again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

const SYSCTL: &str = "/proc/sys/net/netfilter";
const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// The `--conntrack-*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConntrackSettings {
    pub(crate) max_per_core: u64,
    pub(crate) min: u64,
    pub(crate) tcp_timeout_established: Duration,
    pub(crate) tcp_timeout_close_wait: Duration,
    pub(crate) tcp_be_liberal: bool,
    pub(crate) udp_timeout: Duration,
    pub(crate) udp_timeout_stream: Duration,
}

/// One sysctl to set: file under [`SYSCTL`] and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Setting {
    pub(crate) name: &'static str,
    pub(crate) value: u64,
}

impl ConntrackSettings {
    /// The sysctls to set on a node with `cpus` CPUs, in kube-proxy's order.
    pub(crate) fn wanted(&self, cpus: u64) -> Vec<Setting> {
        let mut out = Vec::new();
        if self.max_per_core > 0 {
            let value = self.max_per_core.saturating_mul(cpus).max(self.min);
            out.push(Setting {
                name: "nf_conntrack_max",
                value,
            });
        }
        let seconds = [
            (
                "nf_conntrack_tcp_timeout_established",
                self.tcp_timeout_established,
            ),
            (
                "nf_conntrack_tcp_timeout_close_wait",
                self.tcp_timeout_close_wait,
            ),
            ("nf_conntrack_udp_timeout", self.udp_timeout),
            ("nf_conntrack_udp_timeout_stream", self.udp_timeout_stream),
        ];
        for (name, timeout) in seconds {
            if !timeout.is_zero() {
                out.push(Setting {
                    name,
                    value: timeout.as_secs().max(1),
                });
            }
        }
        if self.tcp_be_liberal {
            out.push(Setting {
                name: "nf_conntrack_tcp_be_liberal",
                value: 1,
            });
        }
        out
    }

    /// Applies [`Self::wanted`] to this node, logging what changed and what could not be set
    /// (a read-only `/proc/sys` in a container without the privilege: the node keeps its own).
    pub(crate) fn apply(&self) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        for setting in self.wanted(cpus) {
            let path = Path::new(SYSCTL).join(setting.name);
            match write_if_different(&path, setting.value) {
                Ok(Some(old)) => {
                    info!(
                        sysctl = setting.name,
                        old,
                        new = setting.value,
                        "conntrack setting"
                    )
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(sysctl = setting.name, value = setting.value, %error, "conntrack setting not made")
                }
            }
            if setting.name == "nf_conntrack_max" {
                raise_hashsize(setting.value / 4);
            }
        }
    }
}

/// The hash table is only ever raised, and only the initial network namespace may write it.
fn raise_hashsize(wanted: u64) {
    let path = PathBuf::from(HASHSIZE);
    match read(&path) {
        Ok(current) if current >= wanted => {}
        Ok(_) => {
            if let Err(error) = std::fs::write(&path, wanted.to_string()) {
                warn!(%error, wanted, "conntrack hash size not raised");
            }
        }
        Err(error) => warn!(%error, "conntrack hash size unknown"),
    }
}

/// Writes `value` unless already there; returns the old value when it wrote.
fn write_if_different(path: &Path, value: u64) -> std::io::Result<Option<u64>> {
    let current = read(path)?;
    if current == value {
        return Ok(None);
    }
    std::fs::write(path, value.to_string())?;
    Ok(Some(current))
}

fn read(path: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("{} is not a number: {text:?}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kube_proxy_defaults() -> ConntrackSettings {
        ConntrackSettings {
            max_per_core: 32768,
            min: 131_072,
            tcp_timeout_established: Duration::from_secs(24 * 3600),
            tcp_timeout_close_wait: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_timeout_stream: Duration::ZERO,
        }
    }

    #[test]
    fn kube_proxy_defaults_size_the_table_by_cpus_with_a_floor() {
        let two = kube_proxy_defaults().wanted(2);
        assert_eq!(
            two,
            [
                Setting {
                    name: "nf_conntrack_max",
                    value: 131_072
                },
                Setting {
                    name: "nf_conntrack_tcp_timeout_established",
                    value: 86400
                },
                Setting {
                    name: "nf_conntrack_tcp_timeout_close_wait",
                    value: 3600
                },
            ]
        );
        assert_eq!(kube_proxy_defaults().wanted(16)[0].value, 524_288);
    }

    #[test]
    fn zero_leaves_a_setting_alone() {
        let settings = ConntrackSettings {
            max_per_core: 0,
            tcp_timeout_established: Duration::ZERO,
            tcp_timeout_close_wait: Duration::ZERO,
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(30),
            ..kube_proxy_defaults()
        };
        let names: Vec<&str> = settings.wanted(4).iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["nf_conntrack_udp_timeout", "nf_conntrack_tcp_be_liberal"]
        );
    }

    #[test]
    fn a_value_in_place_is_not_written() {
        let dir = std::env::temp_dir().join(format!("capstan-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("nf_conntrack_tcp_timeout_close_wait");
        std::fs::write(&path, "60\n").expect("write");
        assert_eq!(write_if_different(&path, 3600).expect("written"), Some(60));
        assert_eq!(write_if_different(&path, 3600).expect("same"), None);
        assert_eq!(read(&path).expect("read"), 3600);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
