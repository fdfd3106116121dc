//! Plain Kubernetes manifests on disk: the same YAML a user would `kubectl apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use capstan_catalog::{Object, ObjectId};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use serde::Deserialize;

use crate::Error;
use crate::source::convert;

/// One directory of manifests and the last good objects of each of its files.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, Vec<Object>>,
}

/// The result of (re)reading a source: its complete objects, and the files that were rejected
/// (their previous content, if any, is kept in `objects`).
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub files: usize,
    pub errors: Vec<Error>,
}

/// The `apiVersion`/`kind` of a document, read before choosing its full type.
#[derive(Deserialize)]
struct TypeMeta {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
}

/// A `kind: List` document, as `kubectl get -o yaml` writes it.
#[derive(Deserialize)]
struct List {
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

// === impl ManifestDir ===

impl ManifestDir {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads every `.yaml`/`.yml` file under the directory. A file that fails keeps its last
    /// good objects; a deleted file loses its objects.
    pub fn load(&mut self) -> Loaded {
        let mut errors = Vec::new();
        let paths = match manifest_files(&self.dir) {
            Ok(paths) => paths,
            Err(error) => {
                // The directory itself is unreadable: keep everything we had.
                errors.push(error);
                return self.loaded(errors);
            }
        };
        let mut next = BTreeMap::new();
        for path in paths {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| Error::File {
                    path: path.clone(),
                    line: None,
                    reason: e.to_string(),
                })
                .and_then(|text| parse(&path, &text));
            match parsed {
                Ok(objects) => {
                    next.insert(path, objects);
                }
                Err(error) => {
                    errors.push(error);
                    if let Some(previous) = self.files.remove(&path) {
                        next.insert(path, previous);
                    }
                }
            }
        }
        self.files = next;
        self.loaded(errors)
    }

    fn loaded(&self, mut errors: Vec<Error>) -> Loaded {
        let mut seen: BTreeMap<ObjectId, &Path> = BTreeMap::new();
        let mut objects = Vec::new();
        for (path, file_objects) in &self.files {
            for object in file_objects {
                let id = object.id();
                if let Some(first) = seen.get(&id) {
                    errors.push(Error::File {
                        path: path.clone(),
                        line: None,
                        reason: format!(
                            "{id} is also defined in {}; ignored here",
                            first.display()
                        ),
                    });
                    continue;
                }
                seen.insert(id, path);
                objects.push(object.clone());
            }
        }
        Loaded {
            objects,
            files: self.files.len(),
            errors,
        }
    }
}

/// Parses one multi-document manifest file into catalog objects. Kinds Capstan does not use are
/// skipped; anything invalid fails the whole file with its line.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Object>, Error> {
    let mut objects = Vec::new();
    for (line, document) in documents(text) {
        let fail = |at: Option<u64>, reason: String| Error::File {
            path: path.to_owned(),
            line: Some(line + at.unwrap_or(1) - 1),
            reason,
        };
        let yaml_error =
            |e: serde_saphyr::Error| fail(e.location().map(|l| l.line()), yaml_message(&e));
        let meta: TypeMeta = serde_saphyr::from_str(document).map_err(yaml_error)?;
        let (Some(api_version), Some(kind)) = (meta.api_version, meta.kind) else {
            return Err(fail(
                None,
                "not a Kubernetes object: apiVersion and kind are required".into(),
            ));
        };
        if convert::is_gateway_kind(&api_version, &kind) {
            let value: serde_json::Value = serde_saphyr::from_str(document).map_err(yaml_error)?;
            let object =
                convert::gateway_object(&kind, value).map_err(|e| fail(None, e.to_string()))?;
            objects.extend(object);
            continue;
        }
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "List") => {
                let list: List = serde_saphyr::from_str(document).map_err(yaml_error)?;
                for item in list.items {
                    convert_json(item, &mut objects).map_err(|reason| fail(None, reason))?;
                }
            }
            ("v1", "Service") => {
                let service: core::Service =
                    serde_saphyr::from_str(document).map_err(yaml_error)?;
                let service = convert::service(&service).map_err(|e| fail(None, e.to_string()))?;
                objects.push(Object::Service(service));
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let slice: discovery::EndpointSlice =
                    serde_saphyr::from_str(document).map_err(yaml_error)?;
                let slice =
                    convert::endpoint_slice(&slice).map_err(|e| fail(None, e.to_string()))?;
                objects.extend(slice.map(Object::EndpointSlice));
            }
            ("networking.k8s.io/v1", "Ingress") => {
                let ingress: networking::Ingress =
                    serde_saphyr::from_str(document).map_err(yaml_error)?;
                let ingress = convert::ingress(&ingress).map_err(|e| fail(None, e.to_string()))?;
                objects.push(Object::Ingress(ingress));
            }
            ("networking.k8s.io/v1", "IngressClass") => {
                let class: networking::IngressClass =
                    serde_saphyr::from_str(document).map_err(yaml_error)?;
                let class =
                    convert::ingress_class(&class).map_err(|e| fail(None, e.to_string()))?;
                objects.push(Object::IngressClass(class));
            }
            ("v1", "Secret") => {
                let secret: core::Secret = serde_saphyr::from_str(document).map_err(yaml_error)?;
                let secret = convert::secret(&secret).map_err(|e| fail(None, e.to_string()))?;
                objects.extend(secret);
            }
            _ => {} // Deployments, ConfigMaps...: not ours.
        }
    }
    Ok(objects)
}

fn convert_json(item: serde_json::Value, objects: &mut Vec<Object>) -> Result<(), String> {
    let kind = item
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let api_version = item
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    if convert::is_gateway_kind(api_version, &kind) {
        let object = convert::gateway_object(&kind, item).map_err(|e| e.to_string())?;
        objects.extend(object);
        return Ok(());
    }
    match (api_version, kind.as_str()) {
        ("v1", "Service") => {
            let service: core::Service = serde_json::from_value(item).map_err(|e| e.to_string())?;
            objects.push(Object::Service(
                convert::service(&service).map_err(|e| e.to_string())?,
            ));
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let slice: discovery::EndpointSlice =
                serde_json::from_value(item).map_err(|e| e.to_string())?;
            let slice = convert::endpoint_slice(&slice).map_err(|e| e.to_string())?;
            objects.extend(slice.map(Object::EndpointSlice));
        }
        ("networking.k8s.io/v1", "Ingress") => {
            let ingress: networking::Ingress =
                serde_json::from_value(item).map_err(|e| e.to_string())?;
            objects.push(Object::Ingress(
                convert::ingress(&ingress).map_err(|e| e.to_string())?,
            ));
        }
        ("networking.k8s.io/v1", "IngressClass") => {
            let class: networking::IngressClass =
                serde_json::from_value(item).map_err(|e| e.to_string())?;
            objects.push(Object::IngressClass(
                convert::ingress_class(&class).map_err(|e| e.to_string())?,
            ));
        }
        ("v1", "Secret") => {
            let secret: core::Secret = serde_json::from_value(item).map_err(|e| e.to_string())?;
            let secret = convert::secret(&secret).map_err(|e| e.to_string())?;
            objects.extend(secret);
        }
        _ => {}
    }
    Ok(())
}

/// The first line of a YAML error, without the rendered snippet.
pub(super) fn yaml_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // The location is reported separately, as path:line.
    let without_location = first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(position, _)| position.contains("column"))
        .map_or(first, |(_, message)| message);
    without_location.to_owned()
}

/// Splits a YAML stream into documents with the 1-based line each starts on. Documents holding
/// only comments or blank lines are dropped.
fn documents(text: &str) -> Vec<(u64, &str)> {
    let mut out = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if is_marker {
            out.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = index as u64 + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start_byte..]));
    out.retain(|(_, doc)| {
        doc.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    out
}

fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files = BTreeSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::File {
            path: dir.clone(),
            line: None,
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                files.insert(path);
            }
        }
    }
    Ok(files.into_iter().collect())
}

#[cfg(test)]
mod tests;
