//! `[[work-type]]`, `[[signer]]` and `[ansible-runner]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{error_of, load_text, minimal};
use crate::config::*;
use crate::host::policy::Limits;
use crate::host::signing::{SignerKey, SigningKeypair};

fn signer(seed: u8) -> SignerKey {
    SigningKeypair::from_private([seed; 32]).public()
}

fn work_types(extra: &str) -> Vec<WorkTypeConfig> {
    load_text(&minimal(extra)).unwrap().work_types
}

#[test]
fn parses_every_handler_with_its_keys() {
    let extra = format!(
        r#"
[[work-type]]
name = "cat"
handler = "command"
program = "/bin/cat"
params = "-n  -v"
allow-runtime-params = true
env = ["FOO", "_BAR2"]
memory-mb = 32
deadline-seconds = 60
output-mb = 1

[[work-type]]
name = "wc"
handler = "command"
program = "wc"

[[work-type]]
name = "local"
handler = "command"
program = "bin/run"

[[work-type]]
name = "ansible"
handler = "ansible-runner"

[[work-type]]
name = "x.y_z-1"
handler = "component"
component = "handlers/x.wasm"

[[work-type]]
name = "signed"
handler = "component"
component = "/opt/h.wasm"
signature = "sigs/h.sig"

[[signer]]
key = "{}"
"#,
        signer(1)
    );
    let types = work_types(&extra);
    assert_eq!(types[0].name, "cat");
    assert_eq!(
        types[0].handler,
        HandlerKind::Command {
            program: PathBuf::from("/bin/cat"),
            params: vec!["-n".into(), "-v".into()],
            allow_runtime_params: true,
            args: None,
        }
    );
    assert_eq!(types[0].env_pass, ["FOO", "_BAR2"]);
    assert_eq!(types[0].limits.memory_bytes, 32 << 20);
    assert_eq!(types[0].limits.deadline, Duration::from_secs(60));
    assert_eq!(types[0].limits.output_bytes, 1 << 20);
    let program = |i: usize| match &types[i].handler {
        HandlerKind::Command { program, .. } => program.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(program(1), Path::new("wc"), "bare names stay bare for PATH");
    assert_eq!(program(2), Path::new("/etc/warren/bin/run"));
    assert_eq!(types[3].handler, HandlerKind::AnsibleRunner);
    assert_eq!(
        types[4].handler,
        HandlerKind::Component {
            path: "/etc/warren/handlers/x.wasm".into(),
            signature: "/etc/warren/handlers/x.wasm.sig".into(),
        }
    );
    assert_eq!(
        types[5].handler,
        HandlerKind::Component {
            path: "/opt/h.wasm".into(),
            signature: "/etc/warren/sigs/h.sig".into(),
        }
    );
}

#[test]
fn defaults_leave_existing_files_unchanged() {
    let config = load_text(&minimal("")).unwrap();
    assert!(config.work_types.is_empty() && config.signers.is_empty());
    assert_eq!(config.ansible_runner, AnsibleRunnerConfig::default());
    assert!(config.ansible_runner.enabled);
    assert!(config.offers_default_ansible_runner());
    let types =
        work_types("[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"cat\"\n");
    assert_eq!(types[0].limits, Limits::default());
    assert_eq!(types[0].limits.memory_bytes, 64 << 20);
    assert_eq!(types[0].limits.deadline, Duration::from_secs(21_600));
    assert_eq!(types[0].limits.output_bytes, 4 << 30);
    assert!(types[0].env_pass.is_empty());
    assert!(matches!(
        &types[0].handler,
        HandlerKind::Command { params, allow_runtime_params: false, .. } if params.is_empty()
    ));
}

#[test]
fn ansible_runner_section_and_signers() {
    let extra = format!(
        "[ansible-runner]\npath = \"venv/bin/ansible-runner\"\nenabled = false\n\
         env = [\"ANSIBLE_FORCE_COLOR\"]\n[[signer]]\nkey = \"{a}\"\n[[signer]]\nkey = \"{b}\"\n\
         [[signer]]\nkey = \"{a}\"\n",
        a = signer(1),
        b = signer(2)
    );
    let config = load_text(&minimal(&extra)).unwrap();
    assert_eq!(
        config.ansible_runner,
        AnsibleRunnerConfig {
            path: Some("/etc/warren/venv/bin/ansible-runner".into()),
            enabled: false,
            env_pass: vec!["ANSIBLE_FORCE_COLOR".into()],
        }
    );
    assert!(!config.offers_default_ansible_runner());
    assert_eq!(config.signers, [signer(1), signer(2)], "duplicates dropped");
}

const CAT: &str = "[[work-type]]\nname = \"cat\"\nhandler = \"command\"\nprogram = \"/bin/cat\"\n";

#[test]
fn invalid_work_type_values_name_file_line_and_key() {
    let cases = [
        (
            "[[work-type]]\nname = \"a b\"\nhandler = \"command\"\nprogram = \"cat\"\n",
            "6: [[work-type]] #1 name: \"a b\" is not a work type name",
        ),
        (
            "[[work-type]]\nname = \"\"\nhandler = \"command\"\nprogram = \"cat\"\n",
            "[[work-type]] #1 name",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"shell\"\n",
            "7: [[work-type]] #1 handler: unknown handler \"shell\"; \
             accepted: command, ansible-runner, component",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\n",
            "7: [[work-type]] #1 program: handler \"command\" needs `program`",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"component\"\n",
            "[[work-type]] #1 component: handler \"component\" needs `component`",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"\"\n",
            "[[work-type]] #1 program: the path is empty",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"x\"\n\
             params = \"-e 'a b'\"\n",
            "9: [[work-type]] #1 params: \"-e 'a b'\" contains a quote",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"ansible-runner\"\nprogram = \"x\"\n",
            "8: [[work-type]] #1 program: `program` does not apply to handler \"ansible-runner\"",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"x\"\n\
             signature = \"s\"\n",
            "[[work-type]] #1 signature: `signature` does not apply to handler \"command\"",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"x\"\n\
             env = [\"OK\", \"NOT-OK\"]\n",
            "[[work-type]] #1 env: \"NOT-OK\" is not an environment variable name",
        ),
        (
            "[[signer]]\nkey = \"x25519:AAAA\"\n",
            "6: [[signer]] #1 key: key token is an x25519 link key",
        ),
        ("[ansible-runner]\nenv = [\"1X\"]\n", "[ansible-runner] env"),
        (
            "[ansible-runner]\npath = \"\"\n",
            "[ansible-runner] path: the path is empty",
        ),
    ];
    for (extra, expected) in cases {
        let err = error_of(&minimal(extra));
        assert!(err.contains(expected), "{extra}\n{err}");
    }
}

#[test]
fn limits_must_be_positive_and_bounded() {
    for (key, value) in [
        ("memory-mb", "0"),
        ("memory-mb", "4097"),
        ("deadline-seconds", "0"),
        ("output-mb", "0"),
    ] {
        let err = error_of(&minimal(&format!("{CAT}{key} = {value}\n")));
        assert!(
            err.contains(&format!(
                "9: [[work-type]] #1 {key}: {value} is not between 1 and"
            )),
            "{err}"
        );
    }
    let err = error_of(&minimal(&format!("{CAT}memory-mb = -1\n")));
    assert!(err.contains("memory-mb"), "{err}");
}

#[test]
fn rejects_unknown_keys_and_missing_names() {
    for extra in [
        format!("{CAT}colour = 1\n"),
        "[[signer]]\nkey = \"k\"\nnode = \"n\"\n".to_owned(),
        "[ansible-runner]\nversion = \"2\"\n".to_owned(),
    ] {
        let err = error_of(&minimal(&extra));
        assert!(err.contains("unknown field"), "{extra}: {err}");
    }
    let err = error_of(&minimal("[[work-type]]\nhandler = \"command\"\n"));
    assert!(err.contains("`name`"), "{err}");
    let err = error_of(&minimal("[[work-type]]\nname = \"c\"\n"));
    assert!(err.contains("`handler`"), "{err}");
}

#[test]
fn cross_checks_name_the_work_type() {
    let err = error_of(&minimal(&format!("{CAT}{CAT}")));
    assert!(
        err.contains("[[work-type]] #2 name: work type \"cat\" is defined twice"),
        "{err}"
    );
    let clash =
        "[[work-type]]\nname = \"ansible-runner\"\nhandler = \"command\"\nprogram = \"x\"\n";
    let err = error_of(&minimal(clash));
    assert!(
        err.contains("[[work-type]] #1 name: work type \"ansible-runner\" clashes"),
        "{err}"
    );
    let off = format!("{clash}[ansible-runner]\nenabled = false\n");
    assert_eq!(work_types(&off)[0].name, ANSIBLE_RUNNER_WORK_TYPE);
    let own = "[[work-type]]\nname = \"ansible-runner\"\nhandler = \"ansible-runner\"\n\
               memory-mb = 128\n";
    let config = load_text(&minimal(own)).unwrap();
    assert!(
        !config.offers_default_ansible_runner(),
        "replaced by its own entry"
    );
    let err = error_of(&minimal(&format!(
        "{own}[ansible-runner]\nenabled = false\n"
    )));
    assert!(
        err.contains("[[work-type]] #1 handler: handler \"ansible-runner\" is used while"),
        "{err}"
    );
    let component =
        "[[work-type]]\nname = \"h\"\nhandler = \"component\"\ncomponent = \"h.wasm\"\n";
    let err = error_of(&minimal(component));
    assert!(
        err.contains(
            "[[work-type]] #1 handler: handler \"component\" needs at least one [[signer]]"
        ),
        "{err}"
    );
}

#[test]
fn command_from_a_flag_value() {
    let work = WorkTypeConfig::command("numbered", "  cat -n  -v ").unwrap();
    assert_eq!(work.name, "numbered");
    assert_eq!(
        work.handler,
        HandlerKind::Command {
            program: "cat".into(),
            params: vec!["-n".into(), "-v".into()],
            allow_runtime_params: false,
            args: None,
        }
    );
    assert_eq!(work.limits, Limits::default());
    assert!(matches!(
        WorkTypeConfig::command("a/b", "cat"),
        Err(Problem::WorkTypeName { .. })
    ));
    assert!(matches!(
        WorkTypeConfig::command("c", " "),
        Err(Problem::EmptyPath)
    ));
    assert!(matches!(
        WorkTypeConfig::command("c", "sh -c \"x\""),
        Err(Problem::QuotedParams { .. })
    ));
}

#[test]
fn program_limits_and_network_come_from_the_work_type() {
    let types = work_types(
        "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"/bin/cat\"\n\
         program-memory-mb = 64\nprogram-pids = 10\nprogram-open-files = 100\n\
         program-file-size-mb = 2\nnetwork = \"none\"\n\
         [[work-type]]\nname = \"d\"\nhandler = \"command\"\nprogram = \"/bin/cat\"\n",
    );
    let limits = types[0].program_limits;
    assert_eq!(
        (
            limits.memory_bytes,
            limits.pids,
            limits.open_files,
            limits.file_size_bytes
        ),
        (64 << 20, 10, 100, 2 << 20)
    );
    assert_eq!(limits.network, crate::host::contain::Network::None);
    assert_eq!(
        types[1].program_limits,
        crate::host::contain::ProgramLimits::default()
    );
}

#[test]
fn bad_program_limits_and_network_are_refused_by_name() {
    let cases = [
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"x\"\nnetwork = \"off\"\n",
            "[[work-type]] #1 network: \"off\" is not one of: host, none",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"ansible-runner\"\nnetwork = \"none\"\n",
            "[[work-type]] #1 network: `network` does not apply to handler \"ansible-runner\"",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"x\"\nprogram-pids = 1\n",
            "[[work-type]] #1 program-pids: 1 is not between 4 and",
        ),
        (
            "[[work-type]]\nname = \"c\"\nhandler = \"command\"\nprogram = \"x\"\n\
             program-memory-mb = 0\n",
            "[[work-type]] #1 program-memory-mb: 0 is not between 16 and",
        ),
        (
            "[work]\ncontainment = \"jail\"\n",
            "[work] containment: \"jail\" is not one of: auto, cgroup, subreaper",
        ),
    ];
    for (extra, expected) in cases {
        let err = error_of(&minimal(extra));
        assert!(err.contains(expected), "{extra}\n{err}");
    }
    let config = load_text(&minimal("[work]\ncontainment = \"subreaper\"\n")).unwrap();
    assert_eq!(config.work.containment, ContainMode::Subreaper);
}
