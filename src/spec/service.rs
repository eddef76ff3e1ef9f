//! From the located tree to validated [`ServiceSpec`]s: which fields a service has, their
//! defaults, and the rules no serde derive can express (one of image/command, unique port names
//! and host ports, unique service names in a file, names and quantities that parse).
//!
//! This file does not read text (that is `tree.rs`) nor parse quantities (`quantity.rs`); it
//! decides nothing about placement. Checks run in field order and stop at the first error.

use std::collections::BTreeMap;

use super::error::{NameKind, Place, QuantityKind, SpecError};
use super::fields::{Fields, Source, item};
use super::quantity::{parse_cpu, parse_duration_ms, parse_memory};
use super::tree::{Node, Value};
use super::{
    Constraint, PartitionMode, PortSpec, Resources, RestartMode, RestartPolicy, ServiceName,
    ServiceSpec, Strategy, Workload, check_label,
};

const SERVICE_FIELDS: &[&str] = &[
    "name",
    "image",
    "command",
    "replicas",
    "resources",
    "ports",
    "env",
    "constraints",
    "spread",
    "strategy",
    "restart",
    "partition",
    "stop_grace",
];
const RESOURCE_FIELDS: &[&str] = &["cpu", "memory"];
const PORT_FIELDS: &[&str] = &["name", "container", "host"];
const RESTART_FIELDS: &[&str] = &["policy", "max_restarts", "window"];

const STRATEGIES: &[&str] = &["spread", "binpack"];
const RESTART_MODES: &[&str] = &["always", "on-failure", "never"];
const PARTITION_MODES: &[&str] = &["available", "majority"];

/// At most this many replicas per service.
pub const MAX_REPLICAS: u32 = 10_000;
/// CPU reserved per instance when `resources.cpu` is not given: 100m.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
/// Memory reserved per instance when `resources.memory` is not given: 64Mi.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
/// `stop_grace` when not given: 10s.
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

const SERVICE_SHAPE: &str = "a service (a mapping with name, image, ...)";

/// The services of a file: each document is one service (a mapping) or a list of them.
pub(crate) fn services(src: &Source<'_>, docs: &[Node]) -> Result<Vec<ServiceSpec>, SpecError> {
    let mut nodes = Vec::new();
    for doc in docs {
        match &doc.value {
            Value::Map(_) => nodes.push(doc),
            Value::Seq(items) => nodes.extend(items),
            _ => {
                return Err(src.wrong_type(doc, "", "a service (a mapping) or a list of services"));
            }
        }
    }
    if nodes.is_empty() {
        return Err(SpecError::NoService {
            at: Place::file(src.file),
        });
    }
    // A file that is one service mapping has paths like `resources.cpu`; anything else is
    // addressed by position, `services[1].resources.cpu`.
    let single = matches!(docs, [doc] if matches!(doc.value, Value::Map(_)));
    let mut seen: BTreeMap<ServiceName, Option<u32>> = BTreeMap::new();
    let mut specs = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.into_iter().enumerate() {
        let path = if single {
            String::new()
        } else {
            item("services", i)
        };
        let (spec, name_at) = service(src, node, &path)?;
        if let Some(first_line) = seen.get(&spec.name) {
            return Err(SpecError::DuplicateService {
                at: name_at,
                name: spec.name.0.to_string(),
                first_line: *first_line,
            });
        }
        seen.insert(spec.name.clone(), name_at.line);
        specs.push(spec);
    }
    Ok(specs)
}

/// One service, and where its name is (for the duplicate-name check).
fn service(src: &Source<'_>, node: &Node, path: &str) -> Result<(ServiceSpec, Place), SpecError> {
    let f = Fields::read(src, node, path, SERVICE_SHAPE, SERVICE_FIELDS)?;

    let name_path = f.path_of("name");
    let Some(name_node) = f.get("name") else {
        return Err(SpecError::MissingField {
            at: src.place(node, &name_path),
            name: "name",
            hint: "add a name like \"web\" (lowercase letters, digits and '-')",
        });
    };
    let raw_name = src.stringish(name_node, &name_path)?;
    let name = ServiceName::new(&raw_name).map_err(|reason| SpecError::InvalidName {
        at: src.place(name_node, &name_path),
        kind: NameKind::Service,
        value: raw_name.clone(),
        reason,
    })?;
    let name_at = src.place(name_node, &name_path);

    let workload = workload(src, &f)?;
    let replicas = match f.get("replicas") {
        None => 1,
        Some(n) => {
            let r = src.int(
                n,
                &f.path_of("replicas"),
                "a whole number of replicas",
                0,
                MAX_REPLICAS.into(),
            )?;
            u32::try_from(r).expect("at most MAX_REPLICAS")
        }
    };
    let resources = match f.get("resources") {
        None => Resources {
            cpu_millis: DEFAULT_CPU_MILLIS,
            memory_bytes: DEFAULT_MEMORY_BYTES,
        },
        Some(n) => resources(src, n, &f.path_of("resources"))?,
    };
    let ports = match f.get("ports") {
        None => Vec::new(),
        Some(n) => ports(
            src,
            n,
            &f.path_of("ports"),
            matches!(workload, Workload::Image { .. }),
        )?,
    };
    let env = match f.get("env") {
        None => BTreeMap::new(),
        Some(n) => env(src, n, &f.path_of("env"))?,
    };
    let constraints = match f.get("constraints") {
        None => Vec::new(),
        Some(n) => constraints(src, n, &f.path_of("constraints"))?,
    };
    let spread = match f.get("spread") {
        None => None,
        Some(n) => {
            let p = f.path_of("spread");
            let label = src.string(n, &p, "a node label name")?;
            check_label(&label).map_err(|reason| SpecError::InvalidName {
                at: src.place(n, &p),
                kind: NameKind::Label,
                value: label.clone(),
                reason,
            })?;
            Some(label)
        }
    };
    let strategy = match f.get("strategy") {
        None => Strategy::default(),
        Some(n) => match src.keyword(n, &f.path_of("strategy"), STRATEGIES)? {
            "binpack" => Strategy::Binpack,
            _ => Strategy::Spread,
        },
    };
    let restart = match f.get("restart") {
        None => RestartPolicy::default(),
        Some(n) => restart(src, n, &f.path_of("restart"))?,
    };
    let partition = match f.get("partition") {
        None => PartitionMode::default(),
        Some(n) => match src.keyword(n, &f.path_of("partition"), PARTITION_MODES)? {
            "majority" => PartitionMode::Majority,
            _ => PartitionMode::Available,
        },
    };
    let stop_grace_ms = match f.get("stop_grace") {
        None => DEFAULT_STOP_GRACE_MS,
        Some(n) => duration(src, n, &f.path_of("stop_grace"))?,
    };

    let spec = ServiceSpec {
        name,
        workload,
        replicas,
        resources,
        ports,
        env,
        constraints,
        spread,
        strategy,
        restart,
        partition,
        stop_grace_ms,
    };
    Ok((spec, name_at))
}

/// `image` (docker driver, `command` overriding its arguments) or `command` alone (process driver).
fn workload(src: &Source<'_>, f: &Fields<'_>) -> Result<Workload, SpecError> {
    let image = match f.get("image") {
        None => None,
        Some(n) => {
            let p = f.path_of("image");
            let image = src.string(n, &p, "an image reference like nginx:1.27")?;
            if image.trim().is_empty() {
                return Err(SpecError::Empty {
                    at: src.place(n, &p),
                    hint: "name an image like nginx:1.27",
                });
            }
            Some(image)
        }
    };
    let command = match f.get("command") {
        None => None,
        Some(n) => Some(command(src, n, &f.path_of("command"))?),
    };
    match (image, command) {
        (Some(image), command) => Ok(Workload::Image { image, command }),
        (None, Some(command)) => Ok(Workload::Command { command }),
        (None, None) => Err(SpecError::NoWorkload {
            at: src.place(f.node, &f.path_of("image")),
        }),
    }
}

/// A list of arguments, or a string run by `/bin/sh -c`.
fn command(src: &Source<'_>, node: &Node, path: &str) -> Result<Vec<String>, SpecError> {
    const HINT: &str =
        "write the program and its arguments, like [\"python3\", \"-m\", \"http.server\"]";
    match &node.value {
        Value::Str(s) if s.trim().is_empty() => Err(SpecError::Empty {
            at: src.place(node, path),
            hint: HINT,
        }),
        Value::Str(s) => Ok(vec!["/bin/sh".to_owned(), "-c".to_owned(), s.clone()]),
        Value::Seq(items) => {
            let Some(first) = items.first() else {
                return Err(SpecError::Empty {
                    at: src.place(node, path),
                    hint: HINT,
                });
            };
            let argv = items
                .iter()
                .enumerate()
                .map(|(i, arg)| src.stringish(arg, &item(path, i)))
                .collect::<Result<Vec<_>, _>>()?;
            if argv[0].trim().is_empty() {
                return Err(SpecError::Empty {
                    at: src.place(first, &item(path, 0)),
                    hint: "name the program to run",
                });
            }
            Ok(argv)
        }
        _ => Err(src.wrong_type(node, path, "a list of arguments or a shell command string")),
    }
}

fn resources(src: &Source<'_>, node: &Node, path: &str) -> Result<Resources, SpecError> {
    let f = Fields::read(
        src,
        node,
        path,
        "a mapping like { cpu: 0.5, memory: 256Mi }",
        RESOURCE_FIELDS,
    )?;
    let cpu_millis = match f.get("cpu") {
        None => DEFAULT_CPU_MILLIS,
        Some(n) => quantity(
            src,
            n,
            &f.path_of("cpu"),
            QuantityKind::Cpu,
            "cores (0.5) or millicores (\"500m\")",
        )?,
    };
    let memory_bytes = match f.get("memory") {
        None => DEFAULT_MEMORY_BYTES,
        Some(n) => quantity(
            src,
            n,
            &f.path_of("memory"),
            QuantityKind::Memory,
            "a size like 256Mi or a number of bytes",
        )?,
    };
    Ok(Resources {
        cpu_millis,
        memory_bytes,
    })
}

/// A cpu or memory amount written as a number or a string.
fn quantity(
    src: &Source<'_>,
    node: &Node,
    path: &str,
    kind: QuantityKind,
    expected: &'static str,
) -> Result<u64, SpecError> {
    // Numbers are parsed from their value (`0x10` is 16), strings from their text. Rust prints
    // an f64 as the shortest decimal that reads back to it, never with an exponent, so YAML's
    // `0.1` is parsed as the text "0.1", exactly.
    let text = match &node.value {
        Value::Int(i) => i.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Str(s) => s.clone(),
        _ => return Err(src.wrong_type(node, path, expected)),
    };
    let parsed = match kind {
        QuantityKind::Cpu => parse_cpu(&text),
        QuantityKind::Memory => parse_memory(&text),
        QuantityKind::Duration => parse_duration_ms(&text),
    };
    parsed.map_err(|reason| SpecError::InvalidQuantity {
        at: src.place(node, path),
        kind,
        value: node.scalar_text(src.text).unwrap_or(text),
        reason,
    })
}

fn duration(src: &Source<'_>, node: &Node, path: &str) -> Result<u64, SpecError> {
    quantity(
        src,
        node,
        path,
        QuantityKind::Duration,
        "a duration like 30s",
    )
}

fn ports(
    src: &Source<'_>,
    node: &Node,
    path: &str,
    has_image: bool,
) -> Result<Vec<PortSpec>, SpecError> {
    let entries = src.list(
        node,
        path,
        "a list of ports like [{ container: 80, host: 8080 }]",
    )?;
    let mut names: BTreeMap<String, Option<u32>> = BTreeMap::new();
    let mut hosts: BTreeMap<u16, Option<u32>> = BTreeMap::new();
    let mut ports = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let f = Fields::read(
            src,
            entry,
            &item(path, i),
            "a port like { container: 80, host: 8080 }",
            PORT_FIELDS,
        )?;
        let port_number = |name: &str| -> Result<Option<(u16, &Node)>, SpecError> {
            let Some(n) = f.get(name) else {
                return Ok(None);
            };
            let p = src.int(n, &f.path_of(name), "a port number", 1, u16::MAX.into())?;
            Ok(Some((u16::try_from(p).expect("checked range"), n)))
        };
        let container = port_number("container")?;
        let host = port_number("host")?;

        let name_path = f.path_of("name");
        let (name, name_at) = match f.get("name") {
            Some(n) => {
                let raw = src.stringish(n, &name_path)?;
                let name = check_port_name(&raw).map_err(|reason| SpecError::InvalidName {
                    at: src.place(n, &name_path),
                    kind: NameKind::Port,
                    value: raw.clone(),
                    reason,
                })?;
                (name, src.place(n, &name_path))
            }
            None => {
                let name = container.map_or_else(|| format!("port{i}"), |(c, _)| format!("p{c}"));
                (name, src.place(entry, &name_path))
            }
        };
        if has_image && container.is_none() {
            return Err(SpecError::MissingContainerPort {
                at: src.place(entry, &f.path_of("container")),
            });
        }
        if let Some(first_line) = names.get(&name) {
            return Err(SpecError::DuplicatePortName {
                at: name_at,
                name,
                first_line: *first_line,
            });
        }
        names.insert(name.clone(), name_at.line);
        if let Some((port, n)) = host {
            let at = src.place(n, &f.path_of("host"));
            if let Some(first_line) = hosts.get(&port) {
                return Err(SpecError::DuplicateHostPort {
                    at,
                    port,
                    first_line: *first_line,
                });
            }
            hosts.insert(port, at.line);
        }
        ports.push(PortSpec {
            name,
            container: container.map(|(c, _)| c),
            host: host.map(|(h, _)| h),
        });
    }
    Ok(ports)
}

/// A port name is `[a-z0-9_]+`, any case, stored lowercase (it becomes `SHOAL_PORT_<NAME>`).
fn check_port_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("empty, use letters, digits and '_'".to_owned());
    }
    if let Some(c) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!("contains {c:?}, use only letters, digits and '_'"));
    }
    Ok(raw.to_ascii_lowercase())
}

fn env(src: &Source<'_>, node: &Node, path: &str) -> Result<BTreeMap<String, String>, SpecError> {
    let mut env = BTreeMap::new();
    for (key, key_node, value_node) in src.string_map(node, path, "a mapping of names to values")? {
        let p = super::fields::child(path, &key);
        check_env_name(&key).map_err(|reason| SpecError::InvalidName {
            at: src.place(key_node, &p),
            kind: NameKind::EnvVar,
            value: key.clone(),
            reason,
        })?;
        let value = src.stringish(value_node, &p)?;
        env.insert(key, value);
    }
    Ok(env)
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a shell can expand.
fn check_env_name(name: &str) -> Result<(), String> {
    const RULE: &str = "use letters, digits and '_', not starting with a digit";
    let mut chars = name.chars();
    match chars.next() {
        None => Err(format!("empty, {RULE}")),
        Some(c) if c.is_ascii_digit() => Err(format!("starts with a digit, {RULE}")),
        Some(_) => match name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            Some(c) => Err(format!("contains {c:?}, {RULE}")),
            None => Ok(()),
        },
    }
}

fn constraints(src: &Source<'_>, node: &Node, path: &str) -> Result<Vec<Constraint>, SpecError> {
    const SHAPE: &str = "a constraint like \"region == eu-west\"";
    let items = src.list(
        node,
        path,
        "a list of constraints like [\"region == eu-west\"]",
    )?;
    items
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = item(path, i);
            let text = src.string(n, &p, SHAPE)?;
            text.parse::<Constraint>()
                .map_err(|reason| SpecError::InvalidConstraint {
                    at: src.place(n, &p),
                    value: text.clone(),
                    reason,
                })
        })
        .collect()
}

fn restart(src: &Source<'_>, node: &Node, path: &str) -> Result<RestartPolicy, SpecError> {
    let f = Fields::read(
        src,
        node,
        path,
        "a mapping like { policy: always, max_restarts: 5, window: 60s }",
        RESTART_FIELDS,
    )?;
    let default = RestartPolicy::default();
    let mode = match f.get("policy") {
        None => default.mode,
        Some(n) => match src.keyword(n, &f.path_of("policy"), RESTART_MODES)? {
            "on-failure" => RestartMode::OnFailure,
            "never" => RestartMode::Never,
            _ => RestartMode::Always,
        },
    };
    let max_restarts = match f.get("max_restarts") {
        None => default.max_restarts,
        Some(n) => {
            let m = src.int(
                n,
                &f.path_of("max_restarts"),
                "a whole number of restarts",
                0,
                u32::MAX.into(),
            )?;
            u32::try_from(m).expect("checked range")
        }
    };
    let window_ms = match f.get("window") {
        None => default.window_ms,
        Some(n) => duration(src, n, &f.path_of("window"))?,
    };
    Ok(RestartPolicy {
        mode,
        max_restarts,
        window_ms,
    })
}
