//! Tests of [`parse`](super::parse) end to end: one test per kind of error, each checking the
//! line and field the error points at, the accepted forms, and never panicking on any input.
//!
//! Quantity tables live beside their parsers in `quantity.rs`; suggestion and tree details
//! beside their code too.

use std::collections::BTreeMap;

use proptest::prelude::{any, prop, prop_assert, proptest};

use super::*;

/// Parses `text` that must fail, checking the error's line and field.
fn rejects(text: &str, line: usize, field: Option<&str>) -> SpecError {
    rejects_file("web.yaml", text, line, field)
}

fn rejects_file(file: &str, text: &str, line: usize, field: Option<&str>) -> SpecError {
    let err = parse(file, text).expect_err("spec should be rejected");
    let msg = err.to_string();
    assert_eq!(err.line(), Some(line), "line of: {msg}");
    assert_eq!(err.field(), field, "field of: {msg}");
    assert!(
        msg.starts_with(&format!("spec {file} line {line}")),
        "prefix of: {msg}"
    );
    assert!(!msg.ends_with('.'), "trailing period: {msg}");
    if let Some(field) = field {
        assert!(
            msg.contains(field.rsplit('.').next().unwrap()),
            "field named in: {msg}"
        );
    }
    err
}

fn one(text: &str) -> ServiceSpec {
    let mut specs = parse("web.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(specs.len(), 1);
    specs.remove(0)
}

// ---- errors, one per class ----

#[test]
fn an_unknown_field_is_named_with_its_line_and_the_closest_field() {
    let err = rejects(
        "name: web\nimage: nginx\n\nreplica: 3\n",
        4,
        Some("replica"),
    );
    assert_eq!(
        err.to_string(),
        r#"spec web.yaml line 4 column 1: unknown field "replica", did you mean "replicas""#
    );
}

#[test]
fn an_unknown_field_is_caught_in_nested_mappings_too() {
    let text = "- name: web\n  imag: nginx\n";
    let err = rejects(text, 2, Some("services[0].imag"));
    assert!(
        err.to_string()
            .contains(r#"unknown field "imag" in services[0], did you mean "image""#),
        "{err}"
    );

    let text = "name: web\nimage: nginx\nresources:\n  cpus: 1\n";
    let err = rejects(text, 4, Some("resources.cpus"));
    assert!(
        matches!(
            err,
            SpecError::UnknownField {
                suggestion: Some("cpu"),
                ..
            }
        ),
        "{err}"
    );

    let text = "name: web\nimage: nginx\nports:\n  - container: 80\n    hots: 8080\n";
    let err = rejects(text, 5, Some("ports[0].hots"));
    assert!(
        matches!(
            err,
            SpecError::UnknownField {
                suggestion: Some("host"),
                ..
            }
        ),
        "{err}"
    );

    let text = "name: web\nimage: nginx\nrestart: { policy: never, windw: 10s }\n";
    let err = rejects(text, 3, Some("restart.windw"));
    assert!(
        matches!(
            err,
            SpecError::UnknownField {
                suggestion: Some("window"),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_unknown_field_with_nothing_close_lists_the_known_fields() {
    let err = rejects("name: web\nimage: nginx\nvolumes: []\n", 3, Some("volumes"));
    assert!(
        err.to_string()
            .contains("expected one of name, image, command, replicas"),
        "{err}"
    );
}

#[test]
fn a_wrong_type_names_the_field_what_was_expected_and_what_was_found() {
    let err = rejects(
        "name: web\nimage: nginx\nreplicas: three\n",
        3,
        Some("replicas"),
    );
    assert_eq!(
        err.to_string(),
        r#"spec web.yaml line 3 column 11: replicas: expected a whole number of replicas, found string "three""#
    );
    rejects("name: web\nimage: nginx\nports: 80\n", 3, Some("ports"));
    rejects(
        "name: web\nimage: nginx\nenv: { A: [1] }\n",
        3,
        Some("env.A"),
    );
    rejects("name: web\nimage: [nginx]\n", 2, Some("image"));
}

#[test]
fn a_number_out_of_range_says_the_range() {
    let err = rejects(
        "name: web\nimage: nginx\nreplicas: 10001\n",
        3,
        Some("replicas"),
    );
    assert!(err.to_string().contains("use 0 to 10000"), "{err}");
    rejects(
        "name: web\nimage: nginx\nreplicas: -1\n",
        3,
        Some("replicas"),
    );
    rejects(
        "name: web\nimage: nginx\nports: [{ container: 0 }]\n",
        3,
        Some("ports[0].container"),
    );
    rejects(
        "name: web\nimage: nginx\nports: [{ container: 80, host: 65536 }]\n",
        3,
        Some("ports[0].host"),
    );
    rejects(
        "name: web\nimage: nginx\nreplicas: 99999999999999999999999999\n",
        3,
        Some("replicas"),
    );
}

#[test]
fn a_missing_name_is_reported_at_the_service() {
    let err = rejects("image: nginx\nreplicas: 2\n", 1, Some("name"));
    assert!(
        matches!(err, SpecError::MissingField { name: "name", .. }),
        "{err}"
    );
    let err = rejects(
        "- name: a\n  image: x\n-   image: nginx\n",
        3,
        Some("services[1].name"),
    );
    assert!(
        err.to_string()
            .contains(r#"missing field "name" in services[1], add a name"#),
        "{err}"
    );
    // `name:` with nothing after it is as good as missing.
    rejects("name:\nimage: nginx\n", 1, Some("name"));
}

#[test]
fn a_service_with_neither_image_nor_command_is_rejected() {
    let err = rejects("name: web\nreplicas: 2\n", 1, Some("image"));
    assert!(matches!(err, SpecError::NoWorkload { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(r#"missing field "image" or "command""#),
        "{err}"
    );
    rejects(
        "- name: a\n  command: [a]\n- name: b\n",
        3,
        Some("services[1].image"),
    );
}

#[test]
fn an_empty_image_or_command_is_rejected() {
    rejects("name: web\nimage: \"\"\n", 2, Some("image"));
    rejects("name: web\ncommand: []\n", 2, Some("command"));
    rejects("name: web\ncommand: \"  \"\n", 2, Some("command"));
    rejects("name: web\ncommand: [\"\", x]\n", 2, Some("command[0]"));
}

#[test]
fn a_bad_service_name_says_why() {
    let err = rejects("name: Web\nimage: nginx\n", 1, Some("name"));
    assert!(
        matches!(
            err,
            SpecError::InvalidName {
                kind: NameKind::Service,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(r#"(try "web")"#), "{err}");
    rejects("name: -web\nimage: nginx\n", 1, Some("name"));
    rejects("name: web_1\nimage: nginx\n", 1, Some("name"));
    rejects(
        &format!("name: {}\nimage: nginx\n", "a".repeat(64)),
        1,
        Some("name"),
    );
}

#[test]
fn bad_cpu_names_the_field_and_the_value() {
    let err = rejects(
        "name: web\nimage: nginx\nresources:\n  cpu: lots\n",
        4,
        Some("resources.cpu"),
    );
    assert!(
        matches!(
            err,
            SpecError::InvalidQuantity {
                kind: QuantityKind::Cpu,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(r#"bad cpu "lots""#), "{err}");
    rejects(
        "name: web\nimage: nginx\nresources: { cpu: -0.5 }\n",
        3,
        Some("resources.cpu"),
    );
    rejects(
        "name: web\nimage: nginx\nresources: { cpu: 0.0001 }\n",
        3,
        Some("resources.cpu"),
    );
    rejects(
        "name: web\nimage: nginx\nresources: { cpu: true }\n",
        3,
        Some("resources.cpu"),
    );
}

#[test]
fn bad_memory_names_the_field_and_the_value() {
    let err = rejects(
        "- name: web\n  image: nginx\n  resources:\n    memory: 256m\n",
        4,
        Some("services[0].resources.memory"),
    );
    assert!(
        matches!(
            err,
            SpecError::InvalidQuantity {
                kind: QuantityKind::Memory,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("write Mi"), "{err}");
    rejects(
        "name: web\nimage: nginx\nresources: { memory: -1 }\n",
        3,
        Some("resources.memory"),
    );
    rejects(
        "name: web\nimage: nginx\nresources: { memory: 0.5 }\n",
        3,
        Some("resources.memory"),
    );
    rejects(
        "name: web\nimage: nginx\nresources: { memory: 16Ei }\n",
        3,
        Some("resources.memory"),
    );
}

#[test]
fn bad_durations_name_the_field_and_the_value() {
    let err = rejects(
        "name: web\nimage: nginx\nstop_grace: 10\n",
        3,
        Some("stop_grace"),
    );
    assert!(
        matches!(
            err,
            SpecError::InvalidQuantity {
                kind: QuantityKind::Duration,
                ..
            }
        ),
        "{err}"
    );
    rejects(
        "name: web\nimage: nginx\nrestart:\n  window: forever\n",
        4,
        Some("restart.window"),
    );
}

#[test]
fn a_bad_constraint_names_the_entry() {
    let text = "name: web\nimage: nginx\nconstraints:\n  - region == eu-west\n  - arch = arm64\n";
    let err = rejects(text, 5, Some("constraints[1]"));
    assert!(matches!(err, SpecError::InvalidConstraint { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(r#"bad constraint "arch = arm64": no operator"#),
        "{err}"
    );
    rejects(
        "name: web\nimage: nginx\nconstraints: [\"== x\"]\n",
        3,
        Some("constraints[0]"),
    );
    rejects(
        "name: web\nimage: nginx\nconstraints: [\"a != b c\"]\n",
        3,
        Some("constraints[0]"),
    );
    rejects(
        "name: web\nimage: nginx\nconstraints: [\"a !=\"]\n",
        3,
        Some("constraints[0]"),
    );
}

#[test]
fn a_duplicate_port_name_points_at_the_second_and_mentions_the_first() {
    let text = "name: web\nimage: nginx\nports:\n  - { name: http, container: 80 }\n  - { name: HTTP, container: 81 }\n";
    let err = rejects(text, 5, Some("ports[1].name"));
    assert!(
        err.to_string()
            .contains(r#"duplicate port name "http" (first at line 4)"#),
        "{err}"
    );
    // Defaulted names collide too.
    let text = "name: web\nimage: nginx\nports:\n  - { name: p80, container: 8000 }\n  - { container: 80 }\n";
    rejects(text, 5, Some("ports[1].name"));
}

#[test]
fn a_bad_port_name_is_rejected() {
    rejects(
        "name: web\nimage: nginx\nports: [{ name: my-port, container: 80 }]\n",
        3,
        Some("ports[0].name"),
    );
}

#[test]
fn a_duplicate_host_port_points_at_the_second() {
    let text = "name: web\nimage: nginx\nports:\n  - { container: 80, host: 8080 }\n  - { container: 81, host: 8080 }\n";
    let err = rejects(text, 5, Some("ports[1].host"));
    assert!(
        matches!(
            err,
            SpecError::DuplicateHostPort {
                port: 8080,
                first_line: Some(4),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_image_service_port_needs_a_container_port() {
    let text = "name: web\nimage: nginx\nports:\n  - host: 8080\n";
    let err = rejects(text, 4, Some("ports[0].container"));
    assert!(
        matches!(err, SpecError::MissingContainerPort { .. }),
        "{err}"
    );
}

#[test]
fn duplicate_service_names_in_one_file_are_rejected() {
    let text =
        "- name: web\n  image: nginx\n- name: api\n  image: api\n- name: web\n  image: other\n";
    let err = rejects(text, 5, Some("services[2].name"));
    assert!(
        matches!(
            err,
            SpecError::DuplicateService {
                first_line: Some(1),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_empty_file_has_no_service() {
    for text in ["", "\n\n", "# only a comment\n", "[]", "---\n"] {
        let err = parse("web.yaml", text).expect_err(text);
        assert!(
            matches!(err, SpecError::NoService { .. }),
            "{text:?}: {err}"
        );
        assert_eq!(
            err.to_string(),
            "spec web.yaml: no service in file, write one service (a mapping with name and image) or a list of them"
        );
    }
}

#[test]
fn a_document_that_is_neither_a_service_nor_a_list_is_rejected() {
    let err = rejects("just a string\n", 1, None);
    assert!(matches!(err, SpecError::WrongType { .. }), "{err}");
    rejects("- 3\n", 1, Some("services[0]"));
}

#[test]
fn invalid_utf8_is_an_error_with_the_line_of_the_first_bad_byte() {
    let err = parse_bytes("web.yaml", b"name: web\nimage: ng\xffinx\n").unwrap_err();
    assert_eq!(
        err,
        SpecError::NotUtf8 {
            at: Place::at("web.yaml", 2, 10, ""),
            byte: 19
        }
    );
    assert_eq!(
        err.to_string(),
        "spec web.yaml line 2 column 10: not valid utf-8 at byte 19, save the file as utf-8"
    );
}

#[test]
fn a_json_syntax_error_has_its_line() {
    let text = "{\n  \"name\": \"web\",\n  \"image\": \"nginx\"\n  \"replicas\": 2\n}\n";
    let err = rejects_file("web.json", text, 4, None);
    assert!(
        matches!(
            err,
            SpecError::Syntax {
                format: Format::Json,
                ..
            }
        ),
        "{err}"
    );
    // Text that looks like JSON gets the JSON error whatever the file is called.
    let err = rejects_file("web.yaml", text, 4, None);
    assert!(
        err.to_string()
            .starts_with("spec web.yaml line 4 column 3: invalid json: expected"),
        "{err}"
    );
}

#[test]
fn a_json_semantic_error_has_its_line_and_field() {
    let text = "[\n  {\"name\": \"web\", \"image\": \"nginx\"},\n  {\"name\": \"api\",\n   \"image\": \"api\",\n   \"replicas\": \"2\"}\n]\n";
    rejects_file("all.json", text, 5, Some("services[1].replicas"));
}

#[test]
fn a_yaml_syntax_error_has_its_line() {
    let err = rejects(
        "name: web\nimage: nginx\nenv:\n  A: \"unterminated\n",
        4,
        None,
    );
    assert!(
        matches!(
            err,
            SpecError::Syntax {
                format: Format::Yaml,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_duplicate_key_has_its_line() {
    let err = rejects("name: web\nimage: nginx\nname: api\n", 3, None);
    assert!(matches!(err, SpecError::DuplicateKey { .. }), "{err}");
}

#[test]
fn a_keyword_with_a_typo_gets_a_suggestion() {
    let err = rejects(
        "name: web\nimage: nginx\nrestart: { policy: on_failure }\n",
        3,
        Some("restart.policy"),
    );
    assert!(
        err.to_string()
            .ends_with(r#"unknown value "on_failure", did you mean "on-failure""#),
        "{err}"
    );
    rejects(
        "name: web\nimage: nginx\nstrategy: pack\n",
        3,
        Some("strategy"),
    );
    rejects(
        "name: web\nimage: nginx\npartition: quorum\n",
        3,
        Some("partition"),
    );
}

#[test]
fn a_bad_env_name_or_value_is_rejected() {
    rejects(
        "name: web\nimage: nginx\nenv:\n  1ST: x\n",
        4,
        Some("env.1ST"),
    );
    rejects(
        "name: web\nimage: nginx\nenv:\n  MY-VAR: x\n",
        4,
        Some("env.MY-VAR"),
    );
    rejects(
        "name: web\nimage: nginx\nenv:\n  EMPTY:\n",
        4,
        Some("env.EMPTY"),
    );
}

#[test]
fn a_bad_spread_label_is_rejected() {
    rejects(
        "name: web\nimage: nginx\nspread: \"my label\"\n",
        3,
        Some("spread"),
    );
}

// ---- accepted specs ----

#[test]
fn a_single_service_reads_with_all_its_fields() {
    let text = r#"
name: web
image: nginx:1.27
replicas: 3
resources: { cpu: 0.5, memory: 256Mi }
ports: [{ name: HTTP, container: 80, host: 8080 }, { container: 443 }]
env: { GREETING: hello, PORT: 8080, RATIO: 1.50, DEBUG: true, COUNTRY: NO }
constraints: ["region == eu-west", "arch != arm64"]
spread: region
strategy: binpack
restart: { policy: on-failure, max_restarts: 3, window: 2m }
partition: majority
stop_grace: 1m30s
"#;
    let spec = one(text);
    let env: BTreeMap<String, String> = [
        ("COUNTRY", "NO"),
        ("DEBUG", "true"),
        ("GREETING", "hello"),
        ("PORT", "8080"),
        ("RATIO", "1.50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let expected = ServiceSpec {
        name: ServiceName("web".into()),
        workload: Workload::Image {
            image: "nginx:1.27".into(),
            command: None,
        },
        replicas: 3,
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
        },
        ports: vec![
            PortSpec {
                name: "http".into(),
                container: Some(80),
                host: Some(8080),
            },
            PortSpec {
                name: "p443".into(),
                container: Some(443),
                host: None,
            },
        ],
        env,
        constraints: vec![
            Constraint {
                label: "region".into(),
                op: ConstraintOp::Eq,
                value: "eu-west".into(),
            },
            Constraint {
                label: "arch".into(),
                op: ConstraintOp::Ne,
                value: "arm64".into(),
            },
        ],
        spread: Some("region".into()),
        strategy: Strategy::Binpack,
        restart: RestartPolicy {
            mode: RestartMode::OnFailure,
            max_restarts: 3,
            window_ms: 120_000,
        },
        partition: PartitionMode::Majority,
        stop_grace_ms: 90_000,
    };
    assert_eq!(spec, expected);
    assert!(spec.has_fixed_host_port());
}

#[test]
fn a_minimal_service_gets_the_defaults() {
    let spec = one("name: web\nimage: nginx\n");
    assert_eq!(spec.replicas, 1);
    assert_eq!(
        spec.resources,
        Resources {
            cpu_millis: 100,
            memory_bytes: 64 << 20
        }
    );
    assert_eq!(
        spec.restart,
        RestartPolicy {
            mode: RestartMode::Always,
            max_restarts: 5,
            window_ms: 60_000
        }
    );
    assert_eq!(spec.strategy, Strategy::Spread);
    assert_eq!(spec.partition, PartitionMode::Available);
    assert_eq!(spec.stop_grace_ms, 10_000);
    assert!(
        spec.ports.is_empty()
            && spec.env.is_empty()
            && spec.constraints.is_empty()
            && spec.spread.is_none()
    );
}

#[test]
fn a_list_of_services_reads_in_order() {
    let text = "- name: web\n  image: nginx\n  command: [nginx, -g, daemon off;]\n- name: worker\n  command: [sleep, 10]\n  replicas: 0\n  ports: [{ host: 9000 }, {}]\n";
    let specs = parse("all.yaml", text).unwrap();
    assert_eq!(specs.len(), 2);
    assert_eq!(
        specs[0].workload,
        Workload::Image {
            image: "nginx".into(),
            command: Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()])
        }
    );
    assert_eq!(
        specs[1].workload,
        Workload::Command {
            command: vec!["sleep".into(), "10".into()]
        }
    );
    assert_eq!(specs[1].workload.driver(), DriverKind::Process);
    assert_eq!(specs[1].replicas, 0);
    assert_eq!(
        specs[1].ports,
        [
            PortSpec {
                name: "port0".into(),
                container: None,
                host: Some(9000)
            },
            PortSpec {
                name: "port1".into(),
                container: None,
                host: None
            },
        ]
    );
}

#[test]
fn several_yaml_documents_read_as_one_list() {
    let specs = parse(
        "all.yaml",
        "name: a\nimage: x\n---\n- name: b\n  image: y\n",
    )
    .unwrap();
    let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn a_command_string_runs_under_the_shell() {
    let spec = one("name: web\ncommand: python3 -m http.server $PORT\n");
    assert_eq!(
        spec.workload,
        Workload::Command {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "python3 -m http.server $PORT".into()
            ]
        }
    );
}

#[test]
fn json_input_reads_like_yaml() {
    let text = r#"[{"name": "web", "image": "nginx", "replicas": 2, "resources": {"cpu": "250m", "memory": 134217728},
                   "env": {"A": 1}, "restart": {"policy": "never"}}]"#;
    let specs = parse("all.json", text).unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].replicas, 2);
    assert_eq!(
        specs[0].resources,
        Resources {
            cpu_millis: 250,
            memory_bytes: 128 << 20
        }
    );
    assert_eq!(specs[0].env.get("A").map(String::as_str), Some("1"));
    assert_eq!(specs[0].restart.mode, RestartMode::Never);
}

#[test]
fn quantities_read_as_numbers_or_strings() {
    let table = [
        ("cpu: 0.5", 500, 64 << 20),
        ("cpu: \"0.5\"", 500, 64 << 20),
        ("cpu: 500m", 500, 64 << 20),
        ("cpu: 2", 2000, 64 << 20),
        ("cpu: 0.1", 100, 64 << 20),
        ("memory: 1024", 100, 1024),
        ("memory: 1G", 100, 1_000_000_000),
        ("memory: 512M", 100, 512_000_000),
        ("memory: 1Gi", 100, 1 << 30),
        ("memory: 64k", 100, 64_000),
        ("memory: 64Ki", 100, 64 << 10),
    ];
    for (line, cpu_millis, memory_bytes) in table {
        let spec = one(&format!(
            "name: web\nimage: nginx\nresources: {{ {line} }}\n"
        ));
        assert_eq!(
            spec.resources,
            Resources {
                cpu_millis,
                memory_bytes
            },
            "{line}"
        );
    }
}

#[test]
fn a_byte_order_mark_is_ignored() {
    assert_eq!(
        parse("web.json", "\u{feff}{\"name\": \"web\", \"image\": \"x\"}")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        parse_bytes("web.yaml", b"\xef\xbb\xbfname: web\nimage: x\n")
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn service_names_follow_dns_label_rules() {
    for good in ["a", "web", "web-1", "1web", &"a".repeat(63)] {
        assert_eq!(
            ServiceName::new(good).map(|n| n.0.to_string()),
            Ok(good.to_owned())
        );
    }
    for bad in [
        "",
        "-a",
        "a-",
        "Web",
        "web_1",
        "web.1",
        "wéb",
        &"a".repeat(64),
    ] {
        let reason = ServiceName::new(bad).expect_err(bad);
        assert!(
            reason == reason.to_lowercase() || reason.contains("try"),
            "{bad}: {reason}"
        );
    }
}

// ---- never panics ----

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let deep_seq = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_map = "a: {".repeat(5_000);
    let deep_block: String = (0..200)
        .map(|i| format!("{}- \n", "  ".repeat(i)))
        .collect();
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    let huge_numbers = "name: web\nimage: x\nreplicas: 1e999\n";
    let huge_int = format!("name: web\nimage: x\nreplicas: {}\n", "9".repeat(5_000));
    let huge_memory = format!(
        "name: web\nimage: x\nresources: {{ memory: {}Ei }}\n",
        "9".repeat(400)
    );
    let huge_cpu = format!(
        "name: web\nimage: x\nresources: {{ cpu: 0.{} }}\n",
        "9".repeat(400)
    );
    let recursive = "a: &a [*a]\n";
    let merge = "base: &b { name: web }\nsvc:\n  <<: *b\n";
    let tags = "name: !!binary aGVsbG8=\nimage: !custom x\n";
    let json_deep = format!("{}{}", "{\"a\":".repeat(1_000), "}".repeat(1_000));
    let inputs = [
        deep_seq.as_str(),
        &deep_map,
        &deep_block,
        bomb,
        huge_numbers,
        &huge_int,
        &huge_memory,
        &huge_cpu,
        recursive,
        merge,
        tags,
        &json_deep,
        "\0",
        "name: web\nimage: x\nenv: { ? [a]: b }\n",
        "? { a: b }\n: c\n",
        "name: &x web\nimage: *x\n",
        "- *unknown\n",
        "%YAML 1.2\n---\nname: web\n",
        "\t",
        "{",
        "[",
        "\"",
        "'",
        "name: web\nimage: x\ncommand: [&a x, *a]\n",
    ];
    for text in inputs {
        // Any result is fine; returning at all (no panic, no stack overflow) is the point.
        let _ = parse("x.yaml", text);
        let _ = parse("x.json", text);
    }
}

proptest! {
    #[test]
    fn parse_never_panics_on_any_string(text in any::<String>()) {
        let _ = parse("x.yaml", &text);
    }

    #[test]
    fn parse_bytes_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_bytes("x.yaml", &bytes);
        let _ = parse_bytes("x.json", &bytes);
    }

    #[test]
    fn parse_never_panics_on_spec_like_text(
        lines in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "name", "image", "command", "replicas", "resources", "cpu", "memory", "ports",
                    "container", "host", "env", "constraints", "restart", "window", "stop_grace", "-", "- name",
                ]),
                prop::sample::select(vec![
                    "", " web", " 3", " -1", " 0.5", " 256Mi", " [80]", " {}", " [{ container: 80 }]",
                    " ~", " \"x\"", " &a 1", " *a", " 1e400", " 99999999999999999999", " a == b", " 10s",
                ]),
                0usize..3,
            ),
            0..12,
        )
    ) {
        let text: String = lines
            .iter()
            .map(|(key, value, indent)| format!("{}{key}:{value}\n", "  ".repeat(*indent)))
            .collect();
        let _ = parse("x.yaml", &text);
    }

    #[test]
    fn every_error_names_the_file_and_has_no_trailing_period(text in "[a-z:\\- \\[\\]{}0-9\n]{0,80}") {
        if let Err(err) = parse("f.yaml", &text) {
            let msg = err.to_string();
            prop_assert!(msg.starts_with("spec f.yaml"), "{}", msg);
            prop_assert!(!msg.ends_with('.'), "{}", msg);
        }
    }
}
