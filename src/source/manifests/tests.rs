use std::path::Path;

use capstan_catalog::Object;
use proptest::prelude::*;

use super::*;

const PATH: &str = "m.yaml";

fn kinds(objects: &[Object]) -> Vec<String> {
    objects.iter().map(|o| o.id().to_string()).collect()
}

#[test]
fn multi_document_files_keep_our_kinds_and_skip_the_rest() {
    let text = "# leading comment\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n\
                ---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 3}\n\
                ---\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: []\n\
                ...\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n";
    let objects = parse(Path::new(PATH), text).expect("valid");
    assert_eq!(
        kinds(&objects),
        ["Service default/web", "EndpointSlice default/web-1"]
    );
}

#[test]
fn kind_list_items_are_read() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {ports: [{port: 80}]}\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n";
    assert_eq!(
        kinds(&parse(Path::new(PATH), text).expect("valid")),
        ["Service default/a"]
    );
}

#[test]
fn errors_name_the_file_and_the_line() {
    let cases = [
        // A type error deep in the third document: line of the bad value.
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - port: eighty\n",
            10,
            "i32",
        ),
        // A conversion error: line of the document's start.
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: Bogus}\n",
            5,
            "unknown spec.type",
        ),
        ("just a string\n", 1, ""),
        (
            "kind: Service\nmetadata: {name: a}\n",
            1,
            "apiVersion and kind are required",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a\n", 3, ""),
    ];
    for (text, line, want) in cases {
        let error = parse(Path::new(PATH), text).expect_err(text);
        let Error::File {
            path,
            line: got,
            reason,
        } = &error
        else {
            panic!("not a file error: {error}");
        };
        assert_eq!(path, Path::new(PATH));
        assert_eq!(*got, Some(line), "{text:?}: {error}");
        assert!(reason.contains(want), "{text:?}: {error}");
        assert!(
            error.to_string().starts_with(&format!("m.yaml:{line}: ")),
            "{error}"
        );
    }
}

#[test]
fn a_failing_file_keeps_its_previous_objects() {
    let dir = std::env::temp_dir().join(format!("capstan-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nested")).expect("mkdir");
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";
    std::fs::write(dir.join("a.yaml"), good).expect("write");
    std::fs::write(dir.join("nested/b.yml"), good.replace("name: a", "name: b")).expect("write");
    std::fs::write(dir.join("notes.txt"), "not yaml {").expect("write");
    std::fs::write(dir.join(".hidden.yaml"), "broken: [").expect("write");
    let mut source = ManifestDir::new(dir.clone());
    let loaded = source.load();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(
        kinds(&loaded.objects),
        ["Service default/a", "Service default/b"]
    );

    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: Bogus}\n",
    )
    .expect("write");
    std::fs::write(dir.join("c.yaml"), good.replace("name: a", "name: c")).expect("write");
    let loaded = source.load();
    assert_eq!(loaded.errors.len(), 1);
    assert!(
        loaded.errors[0]
            .to_string()
            .contains("a.yaml:1: Service default/a: unknown spec.type"),
        "{}",
        loaded.errors[0]
    );
    assert_eq!(
        kinds(&loaded.objects),
        [
            "Service default/a",
            "Service default/c",
            "Service default/b"
        ]
    );

    std::fs::write(dir.join("d.yaml"), good).expect("write");
    let loaded = source.load();
    assert!(
        loaded
            .errors
            .iter()
            .any(|e| e.to_string().contains("also defined in"))
    );
    assert_eq!(loaded.objects.len(), 3, "the duplicate is ignored");

    std::fs::remove_file(dir.join("a.yaml")).expect("rm");
    std::fs::remove_file(dir.join("d.yaml")).expect("rm");
    let loaded = source.load();
    assert!(loaded.errors.is_empty());
    assert_eq!(
        kinds(&loaded.objects),
        ["Service default/c", "Service default/b"],
        "deleted file, deleted objects"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = parse(Path::new(PATH), &text);
    }

    #[test]
    fn mutated_manifests_never_panic(cut in 0usize..400, byte in any::<u8>()) {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.0.0.1\n  ports:\n  - {name: http, port: 80, targetPort: 8080, nodePort: 30000}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]\n";
        let mut bytes = text.as_bytes().to_vec();
        let at = cut % bytes.len();
        bytes[at] = byte;
        let _ = parse(Path::new(PATH), &String::from_utf8_lossy(&bytes));
        let _ = parse(Path::new(PATH), &text[..cut.min(text.len())]);
    }
}
