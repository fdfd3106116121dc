//! `networking.k8s.io/v1` Ingress and IngressClass → catalog entries.

use std::sync::Arc;

use capstan_catalog::{
    ANNOTATION_PREFIX, AuthSecret, Ingress, IngressBackend, IngressClass, IngressPath, IngressRule,
    IngressTls, Object, Origin, TlsSecret, capstan_annotations, route_policy,
};
use capstan_table::{BackendPort, Htpasswd, PathType, ServiceKey, TlsCertificate};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;

use crate::Error;

/// The legacy class annotation, honoured when `spec.ingressClassName` is unset.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks the IngressClass used by Ingresses that name none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Converts an Ingress into a validated catalog entry.
pub fn ingress(object: &networking::Ingress) -> Result<Ingress, Error> {
    let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let err = |reason: String| Error::Convert {
        kind: "Ingress",
        name: format!("{namespace}/{name}"),
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name is required".into()));
    }
    let spec = object.spec.clone().unwrap_or_default();
    let backend = |b: &networking::IngressBackend| -> Result<IngressBackend, Error> {
        let Some(service) = &b.service else {
            return Err(err(
                "only service backends are supported (not resource)".into()
            ));
        };
        let port = service.port.as_ref().ok_or_else(|| {
            err(format!(
                "backend {}: service.port is required",
                service.name
            ))
        })?;
        let port = match (port.number, &port.name) {
            (Some(n), None) => BackendPort::Number(
                u16::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| err(format!("backend port {n} is not 1-65535")))?,
            ),
            (None, Some(name)) if !name.is_empty() => BackendPort::Name(name.as_str().into()),
            _ => {
                return Err(err(
                    "backend port needs exactly one of number or name".into()
                ));
            }
        };
        Ok(IngressBackend {
            service: ServiceKey::new(namespace, &service.name),
            port,
        })
    };
    let mut rules = Vec::new();
    for rule in spec.rules.iter().flatten() {
        let mut paths = Vec::new();
        for path in rule.http.iter().flat_map(|http| &http.paths) {
            let path_type = match path.path_type.as_str() {
                "Exact" => PathType::Exact,
                // ImplementationSpecific: Capstan's implementation is Prefix.
                "Prefix" | "ImplementationSpecific" => PathType::Prefix,
                other => {
                    return Err(err(format!(
                        "pathType {other:?} is not Exact, Prefix or ImplementationSpecific"
                    )));
                }
            };
            paths.push(IngressPath {
                path: path.path.clone().unwrap_or_else(|| "/".into()),
                path_type,
                backend: backend(&path.backend)?,
                policy: None,
            });
        }
        rules.push(IngressRule {
            host: rule.host.clone().filter(|h| !h.is_empty()),
            paths,
        });
    }
    let class_name = spec.ingress_class_name.clone().or_else(|| {
        object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION).cloned())
    });
    let tls = spec
        .tls
        .iter()
        .flatten()
        .map(|tls| IngressTls {
            hosts: tls
                .hosts
                .iter()
                .flatten()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            secret_name: tls
                .secret_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(Arc::from),
        })
        .collect();
    let ingress = Ingress {
        namespace: namespace.into(),
        name: name.into(),
        class_name,
        default_backend: spec.default_backend.as_ref().map(backend).transpose()?,
        rules,
        tls,
        origin: Origin::Kubernetes,
        policy: Arc::new(
            route_policy(
                &capstan_annotations(object.metadata.annotations.iter().flatten()),
                &[],
            )
            .map_err(|reason| err(format!("annotations {ANNOTATION_PREFIX}*: {reason}")))?,
        ),
    };
    ingress.validate()?;
    Ok(ingress)
}

/// Converts an IngressClass.
pub fn ingress_class(object: &networking::IngressClass) -> Result<IngressClass, Error> {
    let name = object.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(Error::Convert {
            kind: "IngressClass",
            name: String::new(),
            reason: "metadata.name is required".into(),
        });
    }
    let is_default = object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true");
    Ok(IngressClass {
        name: Arc::from(name),
        controller: object
            .spec
            .as_ref()
            .and_then(|s| s.controller.clone())
            .unwrap_or_default(),
        is_default,
    })
}

/// The Secret type that carries a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Converts a `kubernetes.io/tls` Secret; other Secret types are not Capstan's (`None`). The
/// certificate and key are parsed and checked here, so a broken Secret is rejected with its reason
/// and the last good one keeps being served.
pub fn tls_secret(object: &core::Secret) -> Result<Option<TlsSecret>, Error> {
    if object.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return Ok(None);
    }
    let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let err = |reason: String| Error::Convert {
        kind: "Secret",
        name: format!("{namespace}/{name}"),
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name is required".into()));
    }
    let optional = |key: &str| -> Option<&[u8]> {
        object
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(String::as_bytes)
            .or_else(|| {
                object
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|b| &b.0[..])
            })
    };
    let field = |key: &str| optional(key).ok_or_else(|| err(format!("data.{key} is required")));
    let source = format!("{namespace}/{name}");
    let certificate =
        TlsCertificate::from_pem(&source, field("tls.crt")?, field("tls.key")?).map_err(err)?;
    let ca = optional("ca.crt")
        .filter(|pem| !pem.trim_ascii().is_empty())
        .map(|pem| capstan_table::ca_bundle_from_pem(pem).map_err(|e| err(format!("ca.crt: {e}"))))
        .transpose()?;
    Ok(Some(TlsSecret {
        namespace: namespace.into(),
        name: name.into(),
        certificate,
        ca,
    }))
}

/// The label that makes a Secret a basic-auth Secret Capstan reads. Only labelled Secrets are
/// watched (a label selector on the server), so other Secrets never reach this node.
pub const BASIC_AUTH_LABEL: &str = "capstan.dev/basic-auth";

/// Converts a basic-auth Secret (labelled `capstan.dev/basic-auth: "true"`, not
/// `kubernetes.io/tls`); others are not Capstan's (`None`). Its users are ingress-nginx's
/// `auth-file` (htpasswd lines under the key `auth`) or, without that key, its `auth-map` (each
/// key a user, each value a hash); they are parsed here, so a broken Secret is rejected with its
/// reason and the last good one keeps being served.
pub fn auth_secret(object: &core::Secret) -> Result<Option<AuthSecret>, Error> {
    let labelled = object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(BASIC_AUTH_LABEL))
        .is_some_and(|v| v == "true");
    if !labelled || object.type_.as_deref() == Some(TLS_SECRET_TYPE) {
        return Ok(None);
    }
    let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let source = format!("{namespace}/{name}");
    let err = |reason: String| Error::Convert {
        kind: "Secret",
        name: source.clone(),
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name is required".into()));
    }
    let mut data: Vec<(&str, &[u8])> = Vec::new();
    for (key, value) in object.data.iter().flatten() {
        data.push((key, &value.0));
    }
    for (key, value) in object.string_data.iter().flatten() {
        data.retain(|(k, _)| k != key);
        data.push((key, value.as_bytes()));
    }
    let text = |key: &str, bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| err(format!("data.{key} is not UTF-8")))
    };
    let users = match data.iter().find(|(k, _)| *k == "auth") {
        Some((key, bytes)) => Htpasswd::from_lines(&source, &text(key, bytes)?),
        None => {
            let pairs = data
                .iter()
                .map(|(key, bytes)| Ok((*key, text(key, bytes)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            Htpasswd::from_pairs(&source, pairs.iter().map(|(k, v)| (*k, v.as_str())))
        }
    }
    .map_err(err)?;
    Ok(Some(AuthSecret {
        namespace: namespace.into(),
        name: name.into(),
        users,
    }))
}

/// A Secret as Capstan reads it: a `kubernetes.io/tls` Secret, a basic-auth Secret, or not
/// Capstan's (`None`).
pub fn secret(object: &core::Secret) -> Result<Option<Object>, Error> {
    if let Some(tls) = tls_secret(object)? {
        return Ok(Some(Object::TlsSecret(tls)));
    }
    Ok(auth_secret(object)?.map(Object::AuthSecret))
}
