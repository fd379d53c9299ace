//! Signing and verification: what passes, and that each kind of tampering is named.

use super::*;

/// A fixed "now" for tests: 2026-11-28T00:00:00Z.
const NOW: u64 = 1_795_824_000;
const DAY: u64 = 24 * 60 * 60;

const MANIFEST_JSON: &str = r#"{"name":"echo","version":"1.2.0","work_types":["echo","cat"],"capabilities":{"programs":["ansible-playbook"]}}"#;

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![id];
    leb128(contents.len(), &mut out);
    out.extend_from_slice(contents);
    out
}

fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
    let mut contents = Vec::new();
    leb128(name.len(), &mut contents);
    contents.extend_from_slice(name.as_bytes());
    contents.extend_from_slice(data);
    section(0, &contents)
}

const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const MODULE_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// A component whose top level carries the manifest section.
fn component_with_top_level_manifest(json: &str) -> Vec<u8> {
    let mut bytes = COMPONENT_PREAMBLE.to_vec();
    bytes.extend(custom_section("producers-ish", b"noise"));
    bytes.extend(custom_section(MANIFEST_SECTION, json.as_bytes()));
    bytes
}

/// A component holding a core module (component section id 1) that carries the section.
fn component_with_nested_manifest(json: &str) -> Vec<u8> {
    let mut module = MODULE_PREAMBLE.to_vec();
    module.extend(custom_section(MANIFEST_SECTION, json.as_bytes()));
    let mut bytes = COMPONENT_PREAMBLE.to_vec();
    bytes.extend(section(1, &module));
    bytes
}

fn signer() -> SigningKeypair {
    SigningKeypair::from_private([42; 32])
}

fn signed(component: &[u8]) -> SignedManifest {
    let about = embedded_manifest(component).unwrap().unwrap();
    let manifest = Manifest::for_component(component, about, NOW, NOW + 365 * DAY);
    sign(&signer(), manifest)
}

#[test]
fn round_trip_verifies_through_the_file_format() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let sig = SignedManifest::from_json(signed(&component).to_json().as_bytes()).unwrap();
    let manifest = verify(&component, &sig, &[signer().public()], NOW + DAY).unwrap();
    assert_eq!(manifest.name, "echo");
    assert_eq!(manifest.work_types, ["echo", "cat"]);
    assert_eq!(manifest.length, component.len() as u64);
    assert!(manifest.capabilities.env.is_empty());
}

#[test]
fn canonical_bytes_are_compact_in_declared_order() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let text = String::from_utf8(signed(&component).manifest.canonical_bytes()).unwrap();
    assert!(
        text.starts_with(r#"{"name":"echo","version":"1.2.0","work_types":"#),
        "{text}"
    );
    assert!(text.contains(r#","capabilities":{"programs":["ansible-playbook"],"env":[]},"#));
    assert!(text.ends_with(&format!(
        r#""issued_at":{NOW},"expires_at":{}}}"#,
        NOW + 365 * DAY
    )));
}

#[test]
fn flipped_component_byte_is_a_hash_mismatch() {
    let mut component = component_with_top_level_manifest(MANIFEST_JSON);
    let sig = signed(&component);
    let last = component.len() - 1;
    component[last] ^= 1;
    let err = verify(&component, &sig, &[signer().public()], NOW).unwrap_err();
    assert!(matches!(err, VerifyError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn signature_for_another_component_does_not_verify() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    // Same length, different bytes: only the hash can tell them apart.
    let other = component_with_top_level_manifest(&MANIFEST_JSON.replace("1.2.0", "1.2.1"));
    assert_eq!(component.len(), other.len());
    let err = verify(&component, &signed(&other), &[signer().public()], NOW).unwrap_err();
    assert!(matches!(err, VerifyError::HashMismatch { .. }), "{err}");
}

#[test]
fn untrusted_signer_is_named() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let stranger = SigningKeypair::from_private([1; 32]).public();
    let err = verify(&component, &signed(&component), &[stranger], NOW).unwrap_err();
    assert_eq!(
        err,
        VerifyError::UntrustedSigner {
            signer: signer().public()
        }
    );
    assert!(err.to_string().contains("ed25519:"), "{err}");
}

#[test]
fn expired_signature_is_rejected() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let sig = signed(&component);
    let at = sig.manifest.expires_at;
    let trusted = [signer().public()];
    assert!(verify(&component, &sig, &trusted, at - 1).is_ok());
    let err = verify(&component, &sig, &trusted, at).unwrap_err();
    assert_eq!(err, VerifyError::Expired { expires_at: at });
}

#[test]
fn signature_from_the_future_is_rejected_beyond_clock_skew() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let sig = signed(&component);
    let trusted = [signer().public()];
    let skew = CLOCK_SKEW.as_secs();
    assert!(verify(&component, &sig, &trusted, NOW - skew).is_ok());
    let err = verify(&component, &sig, &trusted, NOW - skew - 1).unwrap_err();
    assert_eq!(err, VerifyError::NotYetValid { issued_at: NOW });
}

#[test]
fn tampered_manifest_fields_are_bad_signatures() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let trusted = [signer().public()];
    let tamperings: [fn(&mut Manifest); 3] = [
        |m| m.capabilities.programs.push("*".into()),
        |m| m.expires_at += DAY,
        |m| m.work_types.push("shell".into()),
    ];
    for tamper in tamperings {
        let mut sig = signed(&component);
        tamper(&mut sig.manifest);
        let err = verify(&component, &sig, &trusted, NOW).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
    }
}

#[test]
fn tampered_signature_file_text_is_a_bad_signature() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let text = signed(&component).to_json().replace("1.2.0", "1.2.1");
    let sig = SignedManifest::from_json(text.as_bytes()).unwrap();
    let err = verify(&component, &sig, &[signer().public()], NOW).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
}

#[test]
fn malformed_signature_files_are_rejected() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let good = signed(&component).to_json();
    let bad = [
        "not json".to_owned(),
        "{}".to_owned(),
        good.replace("\"signer\"", "\"extra\": 1, \"signer\""),
        good.replace("\"length\"", "\"colour\": 1, \"length\""),
        good.replace("\"sha256\": \"", "\"sha256\": \"zz"),
    ];
    for text in bad {
        let err = SignedManifest::from_json(text.as_bytes()).unwrap_err();
        assert!(matches!(err, VerifyError::Malformed(_)), "{text}: {err}");
    }
}

#[test]
fn link_key_token_as_signer_is_malformed_and_says_so() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let sig = signed(&component);
    let link = crate::keys::LinkKeypair::from_private([42; 32]).public();
    let text = sig
        .to_json()
        .replace(&sig.signer.to_string(), &link.to_string());
    let err = SignedManifest::from_json(text.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("link key"), "{err}");
}

#[test]
fn embedded_manifest_is_found_at_top_level_and_in_nested_modules() {
    let expected = EmbeddedManifest {
        name: "echo".into(),
        version: "1.2.0".into(),
        work_types: vec!["echo".into(), "cat".into()],
        capabilities: Capabilities {
            args: Default::default(),
            programs: vec!["ansible-playbook".into()],
            env: vec![],
        },
    };
    for component in [
        component_with_top_level_manifest(MANIFEST_JSON),
        component_with_nested_manifest(MANIFEST_JSON),
    ] {
        assert_eq!(
            embedded_manifest(&component).unwrap(),
            Some(expected.clone())
        );
    }
}

#[test]
fn embedded_manifest_absent_bad_or_duplicated() {
    assert_eq!(embedded_manifest(&COMPONENT_PREAMBLE).unwrap(), None);
    assert!(matches!(
        embedded_manifest(b"hello world"),
        Err(EmbeddedManifestError::NotWasm(_))
    ));
    assert!(matches!(
        embedded_manifest(&component_with_top_level_manifest("{\"name\":1}")),
        Err(EmbeddedManifestError::BadJson(_))
    ));
    let mut twice = component_with_nested_manifest(MANIFEST_JSON);
    twice.extend(custom_section(MANIFEST_SECTION, MANIFEST_JSON.as_bytes()));
    assert!(matches!(
        embedded_manifest(&twice),
        Err(EmbeddedManifestError::Duplicate)
    ));
}

#[test]
fn huge_timestamps_format_without_panicking() {
    assert_eq!(unix_to_rfc3339(0), "1970-01-01T00:00:00Z");
    assert!(unix_to_rfc3339(u64::MAX).contains("Unix seconds"));
}

#[test]
fn declared_arguments_are_signed_and_absent_ones_keep_old_signatures_valid() {
    let component = component_with_top_level_manifest(MANIFEST_JSON);
    let plain = signed(&component);
    let text = String::from_utf8(plain.manifest.canonical_bytes()).unwrap();
    assert!(!text.contains("args"), "{text}");
    assert!(text.ends_with(r#""capabilities":{"programs":["ansible-playbook"],"env":[]},"issued_at":1795824000,"expires_at":1827360000}"#), "{text}");

    let with_args = r#"{"name":"echo","version":"1.2.0","work_types":["echo"],"capabilities":{"programs":["cat"],"args":{"cat":{"prefix":["-n"],"allow":["{job-path}"]}}}}"#;
    let component = component_with_top_level_manifest(with_args);
    let sig = SignedManifest::from_json(signed(&component).to_json().as_bytes()).unwrap();
    let manifest = verify(&component, &sig, &[signer().public()], NOW + DAY).unwrap();
    let cat = &manifest.capabilities.args["cat"];
    assert_eq!(cat.prefix, ["-n"]);
    assert_eq!(cat.to_string(), "-n then {job-path}");
    let text = String::from_utf8(manifest.canonical_bytes()).unwrap();
    assert!(
        text.contains(r#""args":{"cat":{"prefix":["-n"],"allow":["{job-path}"]}}"#),
        "{text}"
    );
    // Widening the signed arguments breaks the signature.
    let mut widened = sig.clone();
    widened
        .manifest
        .capabilities
        .args
        .get_mut("cat")
        .unwrap()
        .allow = None;
    assert!(matches!(
        verify(&component, &widened, &[signer().public()], NOW + DAY),
        Err(VerifyError::BadSignature { .. })
    ));
}
