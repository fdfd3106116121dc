use super::*;

fn container(name: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> Container {
    Container {
        id: format!("{name}-id"),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        networks: BTreeMap::from([("app_default".to_owned(), vec![IpAddr::from(ip)])]),
        exposed_tcp_ports: vec![80],
        health: Health::None,
        paused: false,
    }
}

fn services(objects: &[Object]) -> Vec<&Service> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn slices(objects: &[Object]) -> Vec<&EndpointSlice> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn ingress(objects: &[Object]) -> Option<&Ingress> {
    objects.iter().find_map(|o| match o {
        Object::Ingress(i) => Some(i),
        _ => None,
    })
}

fn errors_text(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_scaled_compose_service_is_one_service_with_every_container_as_an_endpoint() {
    let labels = [
        ("com.docker.compose.service", "whoami"),
        ("capstan.http.host", "whoami.localhost"),
    ];
    let containers = [
        container("app-whoami-1", [172, 18, 0, 2], &labels),
        container("app-whoami-2", [172, 18, 0, 3], &labels),
    ];
    let (objects, errors) = objects(&containers, None);
    assert!(errors.is_empty(), "{}", errors_text(&errors));
    let services = services(&objects);
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].key, ServiceKey::new(NAMESPACE, "whoami"));
    assert_eq!(services[0].ports[0].port, 80);
    assert!(
        services[0].ports[0].listen.is_empty(),
        "routed services need no listen"
    );
    let slices = slices(&objects);
    assert_eq!(slices.len(), 1);
    let addresses: Vec<IpAddr> = slices[0]
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect();
    assert_eq!(
        addresses,
        [IpAddr::from([172, 18, 0, 2]), IpAddr::from([172, 18, 0, 3])]
    );
    let ingress = ingress(&objects).expect("routes");
    assert_eq!(ingress.rules.len(), 1);
    assert_eq!(ingress.rules[0].host.as_deref(), Some("whoami.localhost"));
    assert_eq!(ingress.rules[0].paths[0].path, "/");
    assert_eq!(
        ingress.rules[0].paths[0].backend.port,
        BackendPort::Number(80)
    );
}

#[test]
fn containers_without_labels_or_disabled_are_left_out() {
    let containers = [
        container("db", [172, 18, 0, 5], &[]),
        container(
            "off",
            [172, 18, 0, 6],
            &[
                ("capstan.enable", "false"),
                ("capstan.http.host", "a.example"),
            ],
        ),
        container(
            "traefik-only",
            [172, 18, 0, 7],
            &[("traefik.enable", "true")],
        ),
    ];
    let (objects, errors) = objects(&containers, None);
    assert!(objects.is_empty() && errors.is_empty());
}

#[test]
fn a_bad_container_is_reported_and_the_others_keep_serving() {
    let mut two_ports = container("api", [172, 18, 0, 2], &[("capstan.http.path", "/api")]);
    two_ports.exposed_tcp_ports = vec![80, 443];
    let containers = [
        two_ports,
        container(
            "web",
            [172, 18, 0, 3],
            &[("capstan.http.host", "web.example")],
        ),
        container("bad-port", [172, 18, 0, 4], &[("capstan.port", "http")]),
        container("idle", [172, 18, 0, 5], &[("capstan.port", "80")]),
        container("Bad_Name!", [172, 18, 0, 6], &[("capstan.http.path", "/")]),
        container(
            "typo",
            [172, 18, 0, 7],
            &[("capstan.http.path", "/"), ("capstan.policy.retires", "2")],
        ),
    ];
    let (objects, errors) = objects(&containers, None);
    let text = errors_text(&errors);
    assert_eq!(errors.len(), 5, "{text}");
    assert!(text.contains("container api: several exposed TCP ports: set capstan.port"));
    assert!(text.contains("capstan.port \"http\" is not a port number"));
    assert!(text.contains("container idle: nothing to serve"));
    assert!(text.contains("\"bad-name!\" must be a DNS label"), "{text}");
    assert!(text.contains("unknown policy key \"retires\""), "{text}");
    let names: Vec<&str> = services(&objects).iter().map(|s| &*s.key.name).collect();
    assert_eq!(names, ["web"]);
}

#[test]
fn health_and_pause_decide_readiness() {
    let labels = [("capstan.service", "web"), ("capstan.http.path", "/")];
    let mut starting = container("web-1", [10, 0, 0, 1], &labels);
    starting.health = Health::Starting;
    let mut unhealthy = container("web-2", [10, 0, 0, 2], &labels);
    unhealthy.health = Health::Unhealthy;
    let mut healthy = container("web-3", [10, 0, 0, 3], &labels);
    healthy.health = Health::Healthy;
    let mut paused = container("web-4", [10, 0, 0, 4], &labels);
    paused.paused = true;
    let plain = container("web-5", [10, 0, 0, 5], &labels);
    let (objects, errors) = objects(&[starting, unhealthy, healthy, paused, plain], None);
    assert!(errors.is_empty(), "{}", errors_text(&errors));
    let ready: Vec<bool> = slices(&objects)[0]
        .endpoints
        .iter()
        .map(|e| e.conditions.ready)
        .collect();
    assert_eq!(ready, [false, false, true, false, true]);
}

#[test]
fn the_network_label_then_the_flag_then_the_first_network_gives_the_address() {
    let mut multi = container("web", [10, 1, 0, 2], &[("capstan.http.path", "/")]);
    multi
        .networks
        .insert("backend".into(), vec![IpAddr::from([10, 2, 0, 2])]);
    let address = |c: &Container, flag: Option<&str>| {
        let (objects, errors) = objects(std::slice::from_ref(c), flag);
        assert!(errors.is_empty(), "{}", errors_text(&errors));
        slices(&objects)[0].endpoints[0].addresses[0]
    };
    // The first by name: app_default sorts before backend.
    assert_eq!(address(&multi, None), IpAddr::from([10, 1, 0, 2]));
    assert_eq!(
        address(&multi, Some("backend")),
        IpAddr::from([10, 2, 0, 2])
    );
    let mut labelled = multi.clone();
    labelled
        .labels
        .insert("capstan.network".into(), "app_default".into());
    assert_eq!(
        address(&labelled, Some("backend")),
        IpAddr::from([10, 1, 0, 2])
    );
    let (_, errors) = objects(&[multi], Some("frontend"));
    assert!(
        errors_text(&errors).contains("not on network \"frontend\" (on: app_default, backend)")
    );

    let mut host = container("host-mode", [0, 0, 0, 0], &[("capstan.http.path", "/")]);
    host.networks = BTreeMap::from([("host".to_owned(), vec![])]);
    assert_eq!(address(&host, None), IpAddr::from([127, 0, 0, 1]));
}

#[test]
fn listen_balance_hosts_and_policy_keys_reach_the_service_and_its_routes() {
    let labels = [
        ("capstan.listen", ":5432, 127.0.0.1:6432"),
        ("capstan.balance", "least-connections"),
        ("capstan.http.host", "a.example, *.b.example"),
        ("capstan.http.path", "/v1"),
        ("capstan.http.path-type", "exact"),
        ("capstan.policy.retries", "3"),
        ("capstan.policy.health-check-path", "/healthz"),
    ];
    let (objects, errors) = objects(&[container("db", [10, 0, 0, 9], &labels)], None);
    assert!(errors.is_empty(), "{}", errors_text(&errors));
    let service = services(&objects)[0];
    let listen: Vec<String> = service.ports[0]
        .listen
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(listen, ["0.0.0.0:5432", "127.0.0.1:6432"]);
    assert!(service.balance.is_some());
    assert!(
        service.policy.health.is_some(),
        "service keys go to the Service"
    );
    let ingress = ingress(&objects).expect("routes");
    let hosts: Vec<Option<&str>> = ingress.rules.iter().map(|r| r.host.as_deref()).collect();
    assert_eq!(hosts, [Some("a.example"), Some("*.b.example")]);
    let path = &ingress.rules[1].paths[0];
    assert_eq!(
        (path.path.as_str(), path.path_type),
        ("/v1", PathType::Exact)
    );
    let policy = path.policy.as_ref().expect("route policy");
    assert_eq!(policy.retry.retries, 3, "route keys go to the route");
}

#[test]
fn containers_of_one_service_that_disagree_are_reported_and_the_first_wins() {
    let containers = [
        container(
            "web-1",
            [10, 0, 0, 1],
            &[
                ("capstan.service", "web"),
                ("capstan.http.host", "one.example"),
            ],
        ),
        container(
            "web-2",
            [10, 0, 0, 2],
            &[
                ("capstan.service", "web"),
                ("capstan.http.host", "two.example"),
            ],
        ),
    ];
    let (objects, errors) = objects(&containers, None);
    assert_eq!(errors.len(), 1);
    assert!(
        errors_text(&errors).contains("container web-2: its capstan.* labels differ from web-1's")
    );
    assert_eq!(slices(&objects)[0].endpoints.len(), 2, "both still serve");
    let hosts: Vec<Option<&str>> = ingress(&objects)
        .expect("routes")
        .rules
        .iter()
        .map(|r| r.host.as_deref())
        .collect();
    assert_eq!(hosts, [Some("one.example")]);
}
