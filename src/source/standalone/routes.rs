//! `routes:` in `capstan.yaml`: host/path HTTP routes to the file's services, for compose users
//! who want the ingress without writing Kubernetes Ingress objects. They become one Ingress
//! (`standalone/capstan-yaml`, always Capstan's) and, for routes with `tls:`, Secrets holding the
//! PEM files' certificate and key.

use std::path::Path;
use std::sync::Arc;

use capstan_catalog::{
    Ingress, IngressBackend, IngressPath, IngressRule, IngressTls, Origin, TlsSecret, route_policy,
};
use capstan_table::{
    BackendPort, Htpasswd, PathType, RoutePolicy, ServiceKey, TlsCertificate, ca_bundle_from_pem,
};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::NAMESPACE;

/// PEM files larger than this are not certificates (and `/dev/zero` is not a file).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// One entry of `routes:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteSchema {
    /// `app.example.com` or `*.example.com`; absent: every host.
    host: Option<String>,
    /// Default `/`.
    path: Option<String>,
    /// `prefix` (default) or `exact`.
    path_type: Option<String>,
    /// A TCP service of this file.
    service: Spanned<String>,
    tls: Option<TlsSchema>,
    /// Retries, rate limits and request limits: the Ingress annotations' keys without
    /// `capstan.dev/`.
    #[serde(default)]
    policy: super::PolicyMap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSchema {
    /// PEM certificate chain, leaf first; relative paths are relative to the config file.
    cert: String,
    /// PEM private key.
    key: String,
}

/// What `routes:` compile to: one Ingress (none without routes) and the TLS routes' Secrets.
pub(super) type Routes = (Option<Ingress>, Vec<TlsSecret>);
/// A problem with the line it is on.
pub(super) type RouteError = (Option<u64>, String);

/// The Ingress and TLS Secrets of `routes`, or the first problem with its line.
pub(super) fn convert(
    config: &Path,
    routes: &[RouteSchema],
    is_tcp_service: impl Fn(&str) -> bool,
) -> Result<Routes, RouteError> {
    if routes.is_empty() {
        return Ok((None, Vec::new()));
    }
    let dir = config.parent().unwrap_or(Path::new("."));
    let mut rules: Vec<IngressRule> = Vec::new();
    let mut tls = Vec::new();
    let mut secrets: Vec<TlsSecret> = Vec::new();
    for route in routes {
        let line = Some(route.service.referenced.line()).filter(|&l| l > 0);
        let fail = |reason: String| (line, reason);
        let service = &route.service.value;
        if !is_tcp_service(service) {
            return Err(fail(format!(
                "route to {service:?}: no TCP service of that name in this file"
            )));
        }
        let path = route.path.clone().unwrap_or_else(|| "/".into());
        let path_type = match route.path_type.as_deref().unwrap_or("prefix") {
            "prefix" => PathType::Prefix,
            "exact" => PathType::Exact,
            other => return Err(fail(format!("path_type {other:?}: use prefix or exact"))),
        };
        let host = route
            .host
            .as_deref()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        let path = IngressPath {
            path,
            path_type,
            backend: IngressBackend {
                service: ServiceKey::new(NAMESPACE, service),
                port: BackendPort::Number(0),
            },
            policy: Some(Arc::new(policy(dir, route).map_err(|reason| {
                fail(format!("route to {service:?}: policy: {reason}"))
            })?)),
        };
        match rules.iter_mut().find(|r| r.host == host) {
            Some(rule) => rule.paths.push(path),
            None => rules.push(IngressRule {
                host: host.clone(),
                paths: vec![path],
            }),
        }
        if let Some(files) = &route.tls {
            let Some(host) = host else {
                return Err(fail("a route with tls: needs a host".into()));
            };
            let read = |file: &str| read_pem(dir, file).map_err(fail);
            let name = format!("route-{}", host.replace('*', "wildcard"));
            let certificate = TlsCertificate::from_pem(
                &format!("{}", dir.join(&files.cert).display()),
                &read(&files.cert)?,
                &read(&files.key)?,
            )
            .map_err(|e| fail(format!("tls for {host}: {e}")))?;
            if !secrets.iter().any(|s| *s.name == *name) {
                secrets.push(TlsSecret {
                    namespace: NAMESPACE.into(),
                    name: name.as_str().into(),
                    certificate,
                    ca: None,
                });
                tls.push(IngressTls {
                    hosts: vec![host],
                    secret_name: Some(name.into()),
                });
            }
        }
    }
    let ingress = Ingress {
        namespace: NAMESPACE.into(),
        name: "capstan-yaml".into(),
        class_name: None,
        default_backend: None,
        rules,
        tls,
        origin: Origin::Standalone,
        policy: Arc::default(),
    };
    ingress.validate().map_err(|e| (None, e.to_string()))?;
    Ok((Some(ingress), secrets))
}

/// A route's `policy:`: the Ingress annotations' keys; `backend-tls-ca-file`, a PEM bundle of the
/// CAs that endpoints spoken to over TLS are checked against; and `auth-file`, an htpasswd file
/// of the users `auth-type: basic` admits.
fn policy(dir: &Path, route: &RouteSchema) -> Result<RoutePolicy, String> {
    let pairs = super::policy_pairs(&route.policy);
    let mut policy = route_policy(&pairs, &[CA_FILE_KEY, AUTH_FILE_KEY])?;
    if let Some(file) = route.policy.get(AUTH_FILE_KEY)
        && let Some(auth) = &mut policy.basic_auth
    {
        let text = String::from_utf8(read_pem(dir, file)?)
            .map_err(|_| format!("{AUTH_FILE_KEY} {file}: not UTF-8"))?;
        let path = dir.join(file).display().to_string();
        let users = Htpasswd::from_lines(&path, &text)
            .map_err(|e| format!("{AUTH_FILE_KEY} {file}: {e}"))?;
        auth.file = Some(users);
    }
    if let Some(file) = route.policy.get(CA_FILE_KEY) {
        let roots = ca_bundle_from_pem(&read_pem(dir, file)?)
            .map_err(|e| format!("{CA_FILE_KEY} {file}: {e}"))?;
        let path = dir.join(file).display().to_string();
        policy.backend.tls_ca = Some((path.into(), roots));
    }
    Ok(policy)
}

/// The policy key naming a CA bundle file (`capstan.yaml` only).
const CA_FILE_KEY: &str = "backend-tls-ca-file";
/// The policy key naming an htpasswd file (`capstan.yaml` only).
const AUTH_FILE_KEY: &str = "auth-file";

/// A PEM (or htpasswd) file of at most [`MAX_PEM_BYTES`], relative to the config file's
/// directory.
fn read_pem(dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    let path = dir.join(file);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.len() <= MAX_PEM_BYTES => {
            std::fs::read(&path).map_err(|e| format!("tls file {file}: {e}"))
        }
        Ok(_) => Err(format!(
            "tls file {file}: not a regular file of at most {MAX_PEM_BYTES} bytes"
        )),
        Err(e) => Err(format!("tls file {file}: {e}")),
    }
}
