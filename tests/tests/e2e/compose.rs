//! The compose file, checked without a Docker engine: it parses, it is valid against the
//! Compose Specification's JSON schema (`../shared/compose-spec.json`; that one check is
//! skipped, saying so, where the file is absent), every environment variable it sets on a
//! chunkflow container is one the binaries read (their `--help` lists every `env`), every
//! command it runs exists (chunkflow subcommands and flags are asked of the real binaries),
//! the topology is the one the README promises, and the stop grace period covers
//! `CHUNKFLOW_GRACE_PERIOD`. A broken file must fail the check.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use chunkflow_tests::binaries::bin_dir;

const CHUNKFLOW_BINARIES: &[&str] = &["producer", "worker", "reducer"];
/// Commands of the runtime image (debian:bookworm-slim) that the compose file may use.
const IMAGE_TOOLS: &[&str] = &["sh", "sort", "head", "cat", "echo", "test", "true"];
/// Read by every binary without a flag.
const PLAIN_ENV: &[&str] = &["RUST_LOG"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn schema_path() -> PathBuf {
    workspace().join("../shared/compose-spec.json")
}

/// Parses a compose file as Compose does: YAML with merge keys (`<<: *anchor`) applied.
fn parse(text: &str) -> Result<Value, String> {
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    // A merged mapping may itself hold a merge key (an anchor built on another): apply
    // until nothing changes.
    for _ in 0..8 {
        let before = yaml.clone();
        yaml.apply_merge()
            .map_err(|e| format!("YAML merge keys: {e}"))?;
        if yaml == before {
            break;
        }
    }
    serde_json::to_value(&yaml).map_err(|e| format!("not representable as JSON: {e}"))
}

fn validate_schema(compose: &Value, problems: &mut Vec<String>) {
    let path = schema_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!(
            "skipping the Compose Specification schema check: {} is absent",
            path.display()
        );
        return;
    };
    let schema: Value = serde_json::from_str(&text).expect("compose-spec.json is JSON");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&schema)
        .expect("compose-spec.json is a valid draft-07 schema");
    for error in validator.iter_errors(compose) {
        problems.push(format!("schema: {} at {}", error, error.instance_path()));
    }
}

/// Help text of `binary [subcommand] --help`, or `None` if the binary refuses it.
fn help(binary: &str, subcommand: Option<&str>) -> Option<String> {
    let mut command = Command::new(bin_dir().join(binary));
    if let Some(sub) = subcommand {
        command.arg(sub);
    }
    let output = command.arg("--help").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn env_names(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The commands a compose `command` or healthcheck `test` runs: each an argv.
fn commands(value: &Value) -> Vec<Vec<String>> {
    let argv: Vec<String> = match value {
        Value::String(text) => text.split_whitespace().map(str::to_string).collect(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
        _ => return Vec::new(),
    };
    let argv = match argv.first().map(String::as_str) {
        Some("CMD") => argv[1..].to_vec(),
        Some("CMD-SHELL") => vec!["sh".into(), "-c".into(), argv[1..].join(" ")],
        Some("NONE") => return Vec::new(),
        _ => argv,
    };
    if argv.len() >= 3 && argv[0] == "sh" && argv[1] == "-c" {
        let mut all = vec![vec!["sh".to_string()]];
        all.extend(shell_commands(&argv[2]));
        return all;
    }
    vec![argv]
}

/// Splits a simple shell script into commands: on `&&`, `||`, `;`, `|` and `$(...)`;
/// drops leading `NAME=` assignments.
fn shell_commands(script: &str) -> Vec<Vec<String>> {
    let script = script.replace("$$", "$");
    let mut pieces = Vec::new();
    let mut rest = script.as_str();
    let mut outer = String::new();
    while let Some(start) = rest.find("$(") {
        outer.push_str(&rest[..start]);
        let inner_end = rest[start..].find(')').map_or(rest.len(), |i| start + i);
        pieces.push(rest[start + 2..inner_end].to_string());
        outer.push_str(" SUBSTITUTION ");
        rest = &rest[(inner_end + 1).min(rest.len())..];
    }
    outer.push_str(rest);
    pieces.push(outer);
    let mut commands = Vec::new();
    for piece in pieces {
        for part in piece
            .split("&&")
            .flat_map(|p| p.split("||"))
            .flat_map(|p| p.split(';'))
            .flat_map(|p| p.split('|'))
        {
            let words: Vec<String> = part
                .split_whitespace()
                .skip_while(|w| w.contains('=') && !w.starts_with('-'))
                .filter(|w| *w != "SUBSTITUTION")
                .map(str::to_string)
                .collect();
            if !words.is_empty() {
                commands.push(words);
            }
        }
    }
    commands
}

fn is_chunkflow_image(service: &Value) -> bool {
    service.get("build").is_some()
        || service["image"]
            .as_str()
            .is_some_and(|image| image.starts_with("chunkflow"))
}

/// Checks one chunkflow command; returns the env names it reads.
fn check_chunkflow_command(
    service: &str,
    argv: &[String],
    problems: &mut Vec<String>,
) -> BTreeSet<String> {
    let binary = argv[0].as_str();
    let subcommand = argv
        .get(1)
        .filter(|a| binary == "producer" && !a.starts_with('-'))
        .map(String::as_str);
    let Some(help) = help(binary, subcommand) else {
        problems.push(format!(
            "service {service}: `{}` is not a command of the image",
            argv.join(" ")
        ));
        return BTreeSet::new();
    };
    for flag in argv.iter().filter(|a| a.starts_with("--")) {
        let name = flag.split('=').next().unwrap_or(flag);
        if !help.contains(&format!("{name} ")) && !help.contains(&format!("{name}\n")) {
            problems.push(format!(
                "service {service}: `{binary}{}` has no flag {name}",
                subcommand.map(|s| format!(" {s}")).unwrap_or_default()
            ));
        }
    }
    let mut env = env_names(&help);
    if subcommand.is_some() {
        // Global flags (connection, log format) are listed in the top-level help too.
        env.extend(help_env(binary));
    }
    env
}

fn help_env(binary: &str) -> BTreeSet<String> {
    help(binary, None)
        .map(|h| env_names(&h))
        .unwrap_or_default()
}

fn parse_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    })
}

/// Every problem of a compose file (empty: it passes).
pub fn check_compose(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let compose = match parse(text) {
        Ok(compose) => compose,
        Err(error) => return vec![error],
    };
    validate_schema(&compose, &mut problems);
    let Some(services) = compose["services"].as_object() else {
        problems.push("no services".into());
        return problems;
    };
    for required in ["rabbitmq", "redis", "worker", "reducer", "producer"] {
        if !services.contains_key(required) {
            problems.push(format!("service {required} is missing"));
        }
    }
    let ports = |name: &str| -> String { compose["services"][name]["ports"].to_string() };
    for port in ["5672:5672", "15672:15672"] {
        if !ports("rabbitmq").contains(port) {
            problems.push(format!("rabbitmq does not publish {port}"));
        }
    }
    if !compose["services"]["rabbitmq"]["image"]
        .as_str()
        .unwrap_or_default()
        .contains("management")
    {
        problems.push("rabbitmq image lacks the management plugin".into());
    }
    if !compose["services"]["redis"]["command"]
        .to_string()
        .contains("\"--appendonly\",\"yes\"")
    {
        problems.push("redis does not run with --appendonly yes".into());
    }
    for (name, replicas) in [("worker", 3), ("reducer", 2)] {
        if compose["services"][name]["deploy"]["replicas"].as_u64() != Some(replicas) {
            problems.push(format!("{name} must have {replicas} replicas"));
        }
    }
    for (name, service) in services {
        let one_shot = service["restart"].as_str() == Some("no");
        if !one_shot && service.get("healthcheck").is_none() {
            problems.push(format!("service {name} has no healthcheck"));
        }
        if let Some(depends) = service["depends_on"].as_object() {
            for (dependency, condition) in depends {
                if !services.contains_key(dependency) {
                    problems.push(format!(
                        "service {name} depends on unknown service {dependency}"
                    ));
                }
                if ["rabbitmq", "redis"].contains(&dependency.as_str())
                    && condition["condition"].as_str() != Some("service_healthy")
                {
                    problems.push(format!(
                        "service {name} must wait for {dependency} with condition: service_healthy"
                    ));
                }
            }
        } else if service["depends_on"].is_array() {
            problems.push(format!(
                "service {name}: depends_on must name conditions (service_healthy)"
            ));
        }
        let mut runs = commands(&service["command"]);
        runs.extend(commands(&service["healthcheck"]["test"]));
        if is_chunkflow_image(service) {
            let mut reads: BTreeSet<String> = PLAIN_ENV.iter().map(|s| s.to_string()).collect();
            for argv in &runs {
                let Some(program) = argv.first() else {
                    continue;
                };
                if CHUNKFLOW_BINARIES.contains(&program.as_str()) {
                    reads.extend(check_chunkflow_command(name, argv, &mut problems));
                } else if !IMAGE_TOOLS.contains(&program.as_str()) {
                    problems.push(format!(
                        "service {name}: command `{program}` does not exist in the chunkflow image"
                    ));
                }
            }
            let environment = service["environment"].as_object().cloned();
            for variable in environment.iter().flat_map(|env| env.keys()) {
                if !reads.contains(variable) {
                    problems.push(format!(
                        "service {name}: environment variable {variable} is read by none of its commands"
                    ));
                }
            }
            if let Some(grace) = service["environment"]["CHUNKFLOW_GRACE_PERIOD"].as_str() {
                let stop = service["stop_grace_period"].as_str().unwrap_or("10s");
                match (parse_seconds(grace), parse_seconds(stop)) {
                    (Some(grace), Some(stop)) if stop > grace => {}
                    _ => problems.push(format!(
                        "service {name}: stop_grace_period {stop} must exceed CHUNKFLOW_GRACE_PERIOD {grace}"
                    )),
                }
            }
        } else {
            for argv in &runs {
                let known = ["rabbitmq-diagnostics", "redis-cli", "redis-server"];
                if let Some(program) = argv.first().filter(|p| !known.contains(&p.as_str())) {
                    problems.push(format!(
                        "service {name}: command `{program}` is not known to exist in its image"
                    ));
                }
            }
        }
    }
    problems
}

fn compose_text() -> String {
    std::fs::read_to_string(workspace().join("docker-compose.yml")).expect("docker-compose.yml")
}

#[test]
fn compose_file_passes_the_check() {
    let problems = check_compose(&compose_text());
    assert!(
        problems.is_empty(),
        "docker-compose.yml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn compose_check_fails_on_broken_files() {
    let good = compose_text();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown variable",
            good.replace("CHUNKFLOW_LEASE: 30s", "CHUNKFLOW_LEASE_TIME: 30s"),
            "CHUNKFLOW_LEASE_TIME is read by none",
        ),
        (
            "unknown subcommand",
            good.replace("producer status $$job", "producer stats $$job"),
            "`producer stats",
        ),
        (
            "unknown flag",
            good.replace("--listen", "--listen-on"),
            "has no flag --listen-on",
        ),
        (
            "missing command in the image",
            good.replace("sort -k2,2nr", "gsort -k2,2nr"),
            "command `gsort` does not exist",
        ),
        (
            "unhealthy dependency",
            good.replacen(
                "condition: service_healthy",
                "condition: service_started",
                1,
            ),
            "condition: service_healthy",
        ),
        (
            "stop grace shorter than the grace period",
            good.replace("CHUNKFLOW_GRACE_PERIOD: 25s", "CHUNKFLOW_GRACE_PERIOD: 45s"),
            "must exceed CHUNKFLOW_GRACE_PERIOD",
        ),
        ("not YAML", format!("{good}\n  : : [\n"), "not valid YAML"),
    ];
    for (what, text, needle) in cases {
        assert_ne!(text, good, "case {what} did not change the file");
        let problems = check_compose(&text);
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "case {what}: expected a problem containing {needle:?}, got {problems:?}"
        );
    }
    if schema_path().exists() {
        let broken = good.replacen("condition: service_healthy", "condition: healthy", 1);
        let problems = check_compose(&broken);
        assert!(
            problems.iter().any(|p| p.starts_with("schema:")),
            "the schema must refuse an unknown depends_on condition: {problems:?}"
        );
        let broken = good.replace(
            "    stop_grace_period: 30s\n",
            "    stop_grace_periods: 30s\n",
        );
        let problems = check_compose(&broken);
        assert!(
            problems.iter().any(|p| p.starts_with("schema:")),
            "the schema must refuse an unknown service key: {problems:?}"
        );
    } else {
        println!(
            "skipping the schema cases: {} is absent",
            schema_path().display()
        );
    }
}
