use super::*;

fn pattern(s: &str) -> ArgPattern {
    s.parse().unwrap()
}

fn policy(prefix: &[&str], allow: Option<&[&str]>) -> ArgPolicy {
    ArgPolicy {
        prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
        allow: allow.map(|a| a.iter().map(|s| pattern(s)).collect()),
    }
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| (*s).to_owned()).collect()
}

/// A job directory with a file, a subdirectory, a symlink out and a dangling symlink out.
struct Job {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn job() -> Job {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("job/sub")).unwrap();
    let root = dir.path().join("job").canonicalize().unwrap();
    std::fs::write(root.join("inside.txt"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/warren-nonexistent", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("sub", root.join("alias")).unwrap();
    Job { _dir: dir, root }
}

impl Job {
    fn at<'a>(&'a self, cwd: &'a Path) -> JobPaths<'a> {
        JobPaths {
            root: &self.root,
            cwd,
        }
    }
}

#[test]
fn patterns_parse_and_print_as_written() {
    for text in [
        "-n",
        "--format=*",
        "*",
        "{job-path}",
        "--out={job-path}",
        "",
    ] {
        assert_eq!(pattern(text).to_string(), text);
    }
    assert_eq!(pattern("-n"), ArgPattern::Exact("-n".into()));
    assert_eq!(pattern("--f=*"), ArgPattern::Prefix("--f=".into()));
    assert_eq!(pattern("{job-path}"), ArgPattern::JobPath(String::new()));
    assert!(matches!(
        "a*b".parse::<ArgPattern>(),
        Err(PatternError::InnerWildcard(_))
    ));
    assert!(matches!(
        "{job-path}*".parse::<ArgPattern>(),
        Err(PatternError::InnerJobPath(_))
    ));
    assert!(matches!(
        "{job-path}/x".parse::<ArgPattern>(),
        Err(PatternError::InnerJobPath(_))
    ));
}

#[test]
fn a_fixed_prefix_must_come_first_and_nothing_else_follows_unless_allowed() {
    let job = job();
    let at = job.at(&job.root);
    let p = ArgPolicy::exactly(args(&["worker", "--private-data-dir", "."]));
    assert_eq!(
        p.check(&args(&["worker", "--private-data-dir", "."]), at),
        Ok(())
    );
    assert!(matches!(
        p.check(&args(&["worker"]), at),
        Err(ArgRefusal::MissingPrefix { .. })
    ));
    assert!(matches!(
        p.check(&args(&["transmit", "--private-data-dir", "."]), at),
        Err(ArgRefusal::MissingPrefix { .. })
    ));
    assert!(matches!(
        p.check(
            &args(&["worker", "--private-data-dir", ".", "--ident=x"]),
            at
        ),
        Err(ArgRefusal::NotAllowed { index: 3, .. })
    ));
    let unrestricted = ArgPolicy::default();
    assert!(unrestricted.is_unrestricted());
    assert_eq!(unrestricted.check(&args(&["/etc/passwd"]), at), Ok(()));
}

#[test]
fn exact_and_prefix_patterns_match_by_text() {
    let job = job();
    let at = job.at(&job.root);
    let p = policy(&[], Some(&["-n", "--format=*"]));
    assert_eq!(p.check(&args(&["-n", "--format=json", "-n"]), at), Ok(()));
    let refused = p.check(&args(&["-n", "-v"]), at).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "argument 1 \"-v\" matches none of `-n`, `--format=*`"
    );
}

#[test]
fn job_paths_must_resolve_inside_the_job_directory() {
    let job = job();
    let p = policy(&[], Some(&["{job-path}", "--out={job-path}"]));
    let root = job.at(&job.root);
    let inside = job.root.join("inside.txt").display().to_string();
    for ok in [
        "inside.txt",
        "./inside.txt",
        "sub/../inside.txt",
        "sub",
        ".",
        "new-file",
        "sub/new-file",
        "alias/new-file",
        "--out=sub/new",
        &inside,
    ] {
        assert_eq!(p.check(&args(&[ok]), root), Ok(()), "{ok} must be allowed");
    }
    for bad in [
        "/etc/passwd",
        "../x",
        "sub/../../x",
        "escape",
        "dangling",
        "missing-dir/new-file",
        "-n",
        "",
        "..",
        "--out=/etc/passwd",
        "--out=escape",
    ] {
        assert!(
            p.check(&args(&[bad]), root).is_err(),
            "{bad:?} must be refused"
        );
    }
    assert!(matches!(
        p.check(&args(&["/etc/passwd"]), root),
        Err(ArgRefusal::OutsideJob { index: 0, .. })
    ));
    // Relative paths resolve from the child's working directory.
    let sub = job.root.join("sub");
    let from_sub = job.at(&sub);
    assert_eq!(p.check(&args(&["../inside.txt"]), from_sub), Ok(()));
    assert!(p.check(&args(&["../../x"]), from_sub).is_err());
}

#[test]
fn a_narrower_declaration_is_covered() {
    let node = policy(
        &["worker"],
        Some(&["--delete", "--worker-info", "{job-path}"]),
    );
    for declared in [
        policy(&["worker"], Some(&["--delete"])),
        policy(&["worker", "--delete"], Some(&[])),
        policy(&["worker", "data"], Some(&["{job-path}"])),
        node.clone(),
    ] {
        assert_eq!(node.covers(&declared), Ok(()), "{declared}");
    }
    let any = ArgPolicy::default();
    assert_eq!(any.covers(&node), Ok(()));
    assert_eq!(any.covers(&ArgPolicy::default()), Ok(()));
    let globs = policy(&[], Some(&["--f=*", "{job-path}"]));
    assert_eq!(globs.covers(&policy(&[], Some(&["--f=x*"]))), Ok(()));
    assert_eq!(
        globs.covers(&policy(&[], Some(&["--f={job-path}"]))),
        Ok(())
    );
    assert_eq!(globs.covers(&policy(&[], Some(&["a/b"]))), Ok(()));
}

#[test]
fn a_broader_declaration_is_refused_naming_what_is_too_broad() {
    let node = policy(&["worker"], Some(&["--delete", "{job-path}"]));
    let cases = [
        (ArgPolicy::default(), "must start with"),
        (policy(&["transmit"], Some(&[])), "must start with"),
        (policy(&["worker", "--ident"], Some(&[])), "--ident"),
        (policy(&["worker", "/etc"], Some(&[])), "/etc"),
        (policy(&["worker"], None), "any arguments"),
        (policy(&["worker"], Some(&["*"])), "arguments `*`,"),
        (policy(&["worker"], Some(&["--d*"])), "--d*"),
        (policy(&["worker"], Some(&["../x"])), "../x"),
    ];
    for (declared, says) in cases {
        let err = node.covers(&declared).expect_err(&declared.to_string());
        assert!(err.to_string().contains(says), "{err} should say {says}");
    }
}

#[test]
fn policies_round_trip_through_json_and_refuse_unknown_fields() {
    let p = policy(&["worker"], Some(&["--delete", "{job-path}"]));
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"prefix":["worker"],"allow":["--delete","{job-path}"]}"#
    );
    assert_eq!(serde_json::from_str::<ArgPolicy>(&json).unwrap(), p);
    let any: ArgPolicy = serde_json::from_str("{}").unwrap();
    assert!(any.is_unrestricted());
    assert!(serde_json::from_str::<ArgPolicy>(r#"{"prefix":[],"extra":1}"#).is_err());
    assert!(serde_json::from_str::<ArgPolicy>(r#"{"allow":["a*b"]}"#).is_err());
    assert_eq!(p.to_string(), "worker then --delete | {job-path}");
    assert_eq!(
        ArgPolicy::exactly(args(&["-n"])).to_string(),
        "-n then nothing"
    );
}
