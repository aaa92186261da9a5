//! The config corpus: every file in `config/` and `tests/config/valid` loads; every file in
//! `tests/config/invalid` fails with the problems its `# expect: PATH @ LINE` lines name.

use std::path::Path;

use edge_gateway::config::{self, ConfigError};

fn toml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no toml files in {}", dir.display());
    files
}

/// The shipped example and the package's starter config carry no password: they do not load
/// until one is set, and say with which command.
const EXAMPLE: &str = "gateway.example.toml";
const STARTER: &str = "gateway.starter.toml";

#[test]
fn every_shipped_and_valid_config_loads() {
    for f in toml_files("config")
        .into_iter()
        .filter(|f| !f.ends_with(EXAMPLE) && !f.ends_with(STARTER))
        .chain(toml_files("tests/config/valid"))
    {
        if let Err(e) = config::load(&f) {
            panic!("{}: {e}: {e:?}", f.display());
        }
    }
}

#[test]
fn every_invalid_config_names_each_problem_with_key_path_and_line() {
    for f in toml_files("tests/config/invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<(String, usize)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(|e| {
                let (path, line) = e.split_once('@').expect("# expect: PATH @ LINE");
                (path.trim().to_string(), line.trim().parse().unwrap())
            })
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no # expect lines",
            f.display()
        );
        let problems = match config::parse(&text) {
            Ok(_) => panic!("{} should be invalid", f.display()),
            Err(ConfigError::Invalid(p)) => p,
            Err(e) => panic!("{}: {e}", f.display()),
        };
        for (path, line) in &expected {
            assert!(
                problems
                    .iter()
                    .any(|p| &p.path == path && p.line == Some(*line)),
                "{}: expected a problem at `{path}` line {line}; got:\n{}",
                f.display(),
                problems
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        assert!(problems.iter().all(|p| !p.message.is_empty()));
    }
}

#[test]
fn templates_expand_into_device_points_with_device_orders() {
    let l = config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/valid/rtu_templates_rules.toml"),
    )
    .unwrap();
    let d = &l.config.devices[0];
    let ids: Vec<_> = d.points.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["voltage", "energy", "alarm_bit"]);
    assert_eq!(
        d.points[0].format.word_order,
        edge_gateway::modbus::codec::WordOrder::Little
    );
    assert_eq!(d.points[2].format.bit, Some(15));
    assert!(matches!(
        &l.config.buses[0].link,
        config::Link::Rtu {
            baud: 19200,
            parity: config::Parity::Even,
            ..
        }
    ));
    assert_eq!(l.config.mqtt.as_ref().unwrap().client_id, "line3-gw1");
}

#[test]
fn points_over_the_same_registers_with_different_types_are_a_warning_not_an_error() {
    let text = r#"
[gateway]
id = "gw"
[[buses]]
name = "b"
kind = "tcp"
address = "h:502"
[[devices]]
id = "d"
bus = "b"
unit = 1
points = [
  { id = "as_float", table = "holding", address = 0, type = "f32" },
  { id = "as_int", table = "holding", address = 0, type = "u32" },
  { id = "a_bit", table = "holding", address = 0, type = "bool", bit = 2 },
]
"#;
    let l = config::parse(text).unwrap();
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert!(l.warnings[0].message.contains("overlaps"));
    assert_eq!(l.warnings[0].path, "devices[0].points[1].address");
}

/// With `[opcua]` on, a node whose NodeId a node before it has is left out by the server:
/// `check-config` says which, at the device's `id`, in the order the server adds them.
#[cfg(feature = "opcua")]
#[test]
fn nodes_the_opcua_server_would_name_alike_are_warnings() {
    let head =
        "[gateway]\nid = \"gw\"\n[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"h:502\"\n";
    let devices = r#"
[[devices]]
id = "gw"
bus = "b"
unit = 1
points = [{ id = "p", table = "holding", address = 0, type = "u16" }]
[[devices]]
id = "a"
bus = "b"
unit = 2
points = [
  { id = "b", table = "holding", address = 0, type = "u16", unit = "bar" },
  { id = "Online", table = "holding", address = 1, type = "u16" },
  { id = "b.EngineeringUnits", table = "holding", address = 2, type = "u16" },
]
[[devices]]
id = "a.b"
bus = "b"
unit = 3
points = [{ id = "p", table = "holding", address = 0, type = "u16" }]
"#;
    let on = config::parse(&format!("{head}[opcua]\nenabled = true\n{devices}")).unwrap();
    let said: Vec<(&str, &str)> = on
        .warnings
        .iter()
        .map(|w| (w.path.as_str(), w.message.as_str()))
        .collect();
    let expected = [
        ("devices[0].id", "device `gw` has the NodeId `gw`"),
        ("devices[1].id", "point `Online` has the NodeId `a.Online`"),
        (
            "devices[1].id",
            "point `b.EngineeringUnits` has the NodeId `a.b.EngineeringUnits`",
        ),
        ("devices[2].id", "device `a.b` has the NodeId `a.b`"),
    ];
    assert_eq!(said.len(), expected.len(), "{said:#?}");
    for ((path, message), (want_path, want)) in said.iter().zip(expected) {
        assert_eq!(*path, want_path);
        assert!(
            message.starts_with(&format!("OPC UA: {want} of another node")),
            "{message}"
        );
    }
    // The server off: nothing is served, nothing to say.
    let off = config::parse(&format!("{head}{devices}")).unwrap();
    assert!(off.warnings.is_empty(), "{:?}", off.warnings);
}

#[test]
fn secrets_are_masked_in_debug_output() {
    let l = config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/valid/rtu_templates_rules.toml"),
    )
    .unwrap();
    let dbg = format!("{:?}", l.config);
    assert!(!dbg.contains("u:p@db"), "{dbg}");
}

/// Hostile test, attack 16: a file that is not UTF-8 was "cannot read: stream did not contain
/// valid UTF-8", with no line. It is a problem like any other now.
#[test]
fn a_config_that_is_not_utf8_names_the_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("gateway.toml");
    std::fs::write(&f, b"[gateway]\nid = \"\xff\xfe\"\n").unwrap();
    match config::load(&f) {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!((p[0].path.as_str(), p[0].line), ("gateway.id", Some(2)));
            assert!(p[0].message.contains("UTF-8"), "{}", p[0].message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_shipped_example_names_its_unset_password_and_the_command_that_sets_it_and_nothing_else() {
    placeholder_password_only(EXAMPLE);
    placeholder_password_only(STARTER);
}

fn placeholder_password_only(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name);
    let Err(ConfigError::Invalid(problems)) = config::load(&path) else {
        panic!("the example must not load with its placeholder password");
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!(p.path, "users[0].password_hash");
    assert!(p.line.is_some());
    assert!(
        p.message
            .contains("edge-gateway user add admin --role admin --config"),
        "{}",
        p.message
    );
    // With a password set, the rest of it is valid.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "\"CHANGE-ME\"",
        &format!("{:?}", edge_gateway::cli::hash_password("x").unwrap()),
    );
    if let Err(e) = config::parse(&text) {
        panic!("{e:?}");
    }
}
