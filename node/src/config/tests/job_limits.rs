//! The per-work-type job limits (`descriptors`, `disk-mb`, `disk-inodes`), argument
//! policies (`args`) and the node's free-space floor.

use super::{error_of, load_text, minimal};
use crate::config::*;
use crate::host::args::ArgPattern;
use crate::host::disk::DiskQuota;

const CAT: &str = "[[work-type]]\nname = \"cat\"\nhandler = \"command\"\nprogram = \"/bin/cat\"\n";

fn first_work_type(extra: &str) -> WorkTypeConfig {
    load_text(&minimal(&format!("{CAT}{extra}")))
        .unwrap()
        .work_types
        .remove(0)
}

#[test]
fn descriptors_and_disk_quota_are_read_and_default_sensibly() {
    let w = first_work_type("descriptors = 64\ndisk-mb = 10\ndisk-inodes = 500\n");
    assert_eq!(w.limits.descriptors, Some(64));
    assert_eq!(
        w.limits.disk,
        Some(DiskQuota {
            bytes: 10 << 20,
            inodes: 500
        })
    );
    let w = first_work_type("");
    assert_eq!(w.limits.descriptors, None, "the node fills in its share");
    assert_eq!(
        w.limits.disk,
        Some(DiskQuota {
            bytes: DEFAULT_DISK_MB << 20,
            inodes: DEFAULT_DISK_INODES
        })
    );
    for (key, value) in [
        ("descriptors", "15"),
        ("disk-mb", "0"),
        ("disk-inodes", "1"),
    ] {
        let err = error_of(&minimal(&format!("{CAT}{key} = {value}\n")));
        assert!(
            err.contains(&format!(
                "9: [[work-type]] #1 {key}: {value} is not between"
            )),
            "{err}"
        );
    }
}

#[test]
fn args_list_what_runtime_params_may_be() {
    let w = first_work_type(
        "params = \"-n\"\nallow-runtime-params = true\nargs = [\"-v\", \"--f=*\", \"{job-path}\"]\n",
    );
    let HandlerKind::Command { params, args, .. } = w.handler else {
        panic!("{:?}", w.handler)
    };
    assert_eq!(params, ["-n"]);
    assert_eq!(
        args,
        Some(vec![
            ArgPattern::Exact("-v".into()),
            ArgPattern::Prefix("--f=".into()),
            ArgPattern::JobPath(String::new()),
        ])
    );
}

#[test]
fn args_errors_name_the_key_and_the_fix() {
    let cases = [
        (
            format!("{CAT}args = [\"x\"]\n"),
            "9: [[work-type]] #1 args: `args` lists what submissions may add, so it needs \
             `allow-runtime-params = true`",
        ),
        (
            format!("{CAT}allow-runtime-params = true\nargs = [\"a*b\"]\n"),
            "[[work-type]] #1 args: argument pattern \"a*b\" has a `*` before its end",
        ),
        (
            "[[work-type]]\nname = \"a\"\nhandler = \"ansible-runner\"\nargs = [\"x\"]\n"
                .to_owned(),
            "`args` does not apply to handler \"ansible-runner\"",
        ),
    ];
    for (text, expected) in cases {
        let err = error_of(&minimal(&text));
        assert!(err.contains(expected), "{text}\n{err}");
    }
}

#[test]
fn the_mirror_output_cap_is_read_in_mib_defaults_to_the_output_cap_and_is_never_off() {
    let config = load_text(&minimal("[work]\nmirror-output-mb = 100\n")).unwrap();
    assert_eq!(config.work.mirror_output, 100 << 20);
    let config = load_text(&minimal("")).unwrap();
    assert_eq!(config.work.mirror_output, DEFAULT_OUTPUT_MB << 20);
    let err = error_of(&minimal("[work]\nmirror-output-mb = 0\n"));
    assert!(err.contains("mirror-output-mb"), "{err}");
}

#[test]
fn the_free_space_floor_is_read_in_mib_and_may_be_off() {
    let config = load_text(&minimal("[work]\nfree-space-floor-mb = 100\n")).unwrap();
    assert_eq!(config.work.free_space_floor, 100 << 20);
    let config = load_text(&minimal("[work]\nfree-space-floor-mb = 0\n")).unwrap();
    assert_eq!(config.work.free_space_floor, 0);
    let config = load_text(&minimal("")).unwrap();
    assert_eq!(
        config.work.free_space_floor,
        DEFAULT_FREE_SPACE_FLOOR_MB << 20
    );
    let err = error_of(&minimal("[work]\nfree-space-floor-mb = -1\n"));
    assert!(err.contains("free-space-floor-mb"), "{err}");
}
