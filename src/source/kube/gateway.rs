//! Gateway API objects from the cluster: GatewayClasses, Gateways, HTTPRoutes, GRPCRoutes,
//! ReferenceGrants
//! (as `DynamicObject`s: k8s-openapi has no types for CRDs) and Namespaces (for `allowedRoutes`
//! selectors), each its own watched source, converted by the same function as manifest files.
//!
//! The group is looked up once at start: without the CRDs installed each of these sources is
//! reported synced and empty (the agent must not wait forever for kinds the cluster lacks);
//! installing them later needs a restart, as for kube-proxy's optional informers.

use std::collections::HashMap;

use capstan_catalog::{Object, ObjectId, RouteKind, Update};
use k8s_openapi::api::core::v1 as core;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::info;

use super::watch::{self, Kind, WatchContext};
use crate::Error;
use crate::source::convert;

pub(super) const GATEWAY_CLASSES: &str = "gatewayclasses";
pub(super) const GATEWAYS: &str = "gateways";
pub(super) const HTTP_ROUTES: &str = "httproutes";
pub(super) const GRPC_ROUTES: &str = "grpcroutes";
pub(super) const REFERENCE_GRANTS: &str = "referencegrants";
pub(super) const NAMESPACES: &str = "namespaces";

const GROUP: &str = "gateway.networking.k8s.io";

/// The served version of each Gateway API resource Capstan reads (`None`: that one is not served,
/// as GRPCRoute before Gateway API v1.1), or `None` when the CRDs are not installed.
/// ReferenceGrant: `v1` when served, else `v1beta1`.
pub(super) async fn served_versions(
    client: &Client,
) -> Option<[(&'static str, Option<String>); 5]> {
    let v1 = client
        .list_api_group_resources(&format!("{GROUP}/v1"))
        .await
        .ok()?;
    let has = |plural: &str| v1.resources.iter().any(|r| r.name == plural);
    if !has(GATEWAYS) || !has(HTTP_ROUTES) || !has(GATEWAY_CLASSES) {
        return None;
    }
    let grants = if has(REFERENCE_GRANTS) {
        "v1"
    } else {
        "v1beta1"
    };
    let v1 = || Some("v1".to_owned());
    Some([
        (GATEWAY_CLASSES, v1()),
        (GATEWAYS, v1()),
        (HTTP_ROUTES, v1()),
        (GRPC_ROUTES, has(GRPC_ROUTES).then(|| "v1".to_owned())),
        (REFERENCE_GRANTS, Some(grants.to_owned())),
    ])
}

/// The `ApiResource` of a Gateway API plural at `version`.
pub(super) fn api_resource(plural: &str, version: &str) -> ApiResource {
    let kind = match plural {
        GATEWAY_CLASSES => "GatewayClass",
        GATEWAYS => "Gateway",
        HTTP_ROUTES => "HTTPRoute",
        GRPC_ROUTES => "GRPCRoute",
        _ => "ReferenceGrant",
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, version, kind), plural)
}

/// Starts the Gateway API and Namespace watches, or reports the Gateway API sources empty when
/// the cluster has no CRDs for them.
pub(super) async fn spawn(client: Client, mut contexts: HashMap<&'static str, WatchContext>) {
    let mut context = |kind: &str| contexts.remove(kind).expect("a context per kind");
    tokio::spawn(watch::run(
        Api::<core::Namespace>::all(client.clone()),
        watcher::Config::default(),
        Kind {
            id: |o: &core::Namespace| {
                ObjectId::Namespace(o.metadata.name.as_deref().unwrap_or_default().into())
            },
            convert: |o| {
                let value = serde_json::to_value(o).map_err(|e| Error::Convert {
                    kind: "Namespace",
                    name: o.metadata.name.clone().unwrap_or_default(),
                    reason: e.to_string(),
                })?;
                convert::gateway_object("Namespace", value)
            },
        },
        context(NAMESPACES),
    ));
    let versions = served_versions(&client).await.unwrap_or_else(|| {
        info!("Gateway API CRDs not installed; Gateways and their routes are not served");
        [
            GATEWAY_CLASSES,
            GATEWAYS,
            HTTP_ROUTES,
            GRPC_ROUTES,
            REFERENCE_GRANTS,
        ]
        .map(|k| (k, None))
    });
    for (plural, version) in versions {
        let Some(version) = version else {
            let cx = context(plural);
            let empty = Update::Reset {
                source: cx.source.clone(),
                objects: vec![],
            };
            let _ = cx.updates.send(empty).await;
            continue;
        };
        let resource = api_resource(plural, &version);
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let kind = match plural {
            GATEWAY_CLASSES => Kind {
                id: |o: &DynamicObject| ObjectId::GatewayClass(name(o).into()),
                convert: |o| dynamic("GatewayClass", o),
            },
            GATEWAYS => Kind {
                id: |o: &DynamicObject| ObjectId::Gateway {
                    namespace: namespace(o).into(),
                    name: name(o).into(),
                },
                convert: |o| dynamic("Gateway", o),
            },
            HTTP_ROUTES => Kind {
                id: |o: &DynamicObject| ObjectId::HttpRoute {
                    kind: RouteKind::Http,
                    namespace: namespace(o).into(),
                    name: name(o).into(),
                },
                convert: |o| dynamic("HTTPRoute", o),
            },
            GRPC_ROUTES => Kind {
                id: |o: &DynamicObject| ObjectId::HttpRoute {
                    kind: RouteKind::Grpc,
                    namespace: namespace(o).into(),
                    name: name(o).into(),
                },
                convert: |o| dynamic("GRPCRoute", o),
            },
            _ => Kind {
                id: |o: &DynamicObject| ObjectId::ReferenceGrant {
                    namespace: namespace(o).into(),
                    name: name(o).into(),
                },
                convert: |o| dynamic("ReferenceGrant", o),
            },
        };
        tokio::spawn(watch::run(
            api,
            watcher::Config::default(),
            kind,
            context(plural),
        ));
    }
}

/// The sources of this module, for the publisher to wait on.
pub(super) fn kinds() -> [&'static str; 6] {
    [
        GATEWAY_CLASSES,
        GATEWAYS,
        HTTP_ROUTES,
        GRPC_ROUTES,
        REFERENCE_GRANTS,
        NAMESPACES,
    ]
}

fn name(object: &DynamicObject) -> &str {
    object.metadata.name.as_deref().unwrap_or_default()
}

fn namespace(object: &DynamicObject) -> &str {
    object.metadata.namespace.as_deref().unwrap_or("default")
}

fn dynamic(kind: &str, object: &DynamicObject) -> Result<Option<Object>, Error> {
    let value = serde_json::to_value(object).map_err(|e| Error::Convert {
        kind: "Gateway API object",
        name: name(object).to_owned(),
        reason: e.to_string(),
    })?;
    convert::gateway_object(kind, value)
}
