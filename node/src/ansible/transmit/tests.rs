//! The zip's plan, layout and length, read back by the zip crate; files that change while
//! they are sent. (The real worker reading the stream is in `ansible::tests`.)

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::compress::{self, Data, Holding, is_incompressible_name, pays};
use super::emit::Zip;
use super::layout::{self, DosTime, Method, Record};
use super::plan::{self, Body, Entry};
use super::{Transmit, TransmitError};

/// `len` bytes of a xorshift stream: deflate cannot shrink them.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `len` bytes of YAML-ish text.
pub(crate) fn text_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("- name: task {i}\n  debug: msg=hello\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Small holding limits, so tests pass them with small files.
const SMALL_HOLDING: Holding = Holding {
    budget: 256 * 1024,
    file_max: 128 * 1024,
};

fn planned(dir: &Path) -> Zip {
    let entries = plan::walk(dir).expect("walk");
    let data = compress::choose(&entries, SMALL_HOLDING).expect("choose");
    Zip::new(entries, data)
}

fn data_of<'a>(zip: &'a Zip, entries: &[Entry], name: &str) -> &'a Data {
    let index = entries
        .iter()
        .position(|e| e.name == name)
        .expect("entry planned");
    &zip.data()[index]
}

fn written(zip: Zip) -> Vec<u8> {
    let mut out = Vec::new();
    zip.write(&mut out).expect("write");
    out
}

#[test]
fn already_compressed_extensions_are_stored() {
    for name in [
        "a.zip",
        "dir/b.TGZ",
        "c.whl",
        "d.tar.gz",
        "e.jpg",
        "f.zst",
        "g.jar",
    ] {
        assert!(is_incompressible_name(name), "{name}");
    }
    for name in [
        "site.yml",
        "hosts",
        "x.json",
        "zip",
        "dir.gz/file",
        "README.md",
    ] {
        assert!(!is_incompressible_name(name), "{name}");
    }
}

#[test]
fn the_sample_decides_random_bytes_do_not_pay_and_text_does() {
    assert!(!pays(&random_bytes(64 * 1024, 1)));
    assert!(pays(&text_bytes(64 * 1024)));
    assert!(!pays(&[]));
}

#[test]
fn incompressible_files_are_stored_and_text_is_deflated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(root.join("blob"), random_bytes(300_000, 2)).expect("blob");
    std::fs::write(root.join("small-random"), random_bytes(1_000, 3)).expect("small");
    std::fs::write(root.join("site.yml"), text_bytes(100_000)).expect("text");
    std::fs::write(root.join("text.gz"), text_bytes(100_000)).expect("named gz");
    std::fs::write(root.join("empty"), b"").expect("empty");
    std::fs::write(root.join("big.log"), text_bytes(1 << 20)).expect("big text");
    let entries = plan::walk(root).expect("walk");
    let data = compress::choose(&entries, SMALL_HOLDING).expect("choose");
    let zip = Zip::new(entries.clone(), data);
    for stored in ["blob", "small-random", "text.gz", "empty"] {
        assert!(
            matches!(data_of(&zip, &entries, stored), Data::Stored),
            "{stored}"
        );
    }
    let Data::Held { bytes, .. } = data_of(&zip, &entries, "site.yml") else {
        panic!("site.yml is not held deflated");
    };
    assert!(bytes.len() < 100_000 / 10, "{}", bytes.len());
    // Over the held-file limit: measured now, deflated again while sent.
    let Data::Again { compressed, .. } = data_of(&zip, &entries, "big.log") else {
        panic!("big.log is not deflated while sent");
    };
    assert!(*compressed < (1 << 20) / 10);
    let bytes = written(zip);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let methods: Vec<(String, zip::CompressionMethod)> = (0..archive.len())
        .map(|i| {
            let file = archive.by_index(i).expect("entry");
            (file.name().expect("name").into_owned(), file.compression())
        })
        .collect();
    for (name, method) in methods {
        let deflated = matches!(name.as_str(), "site.yml" | "big.log");
        assert_eq!(
            method == zip::CompressionMethod::Deflated,
            deflated,
            "{name}"
        );
    }
    let mut big = Vec::new();
    archive
        .by_name("big.log")
        .expect("big.log")
        .read_to_end(&mut big)
        .expect("inflate big.log");
    assert!(big == text_bytes(1 << 20));
}

#[test]
fn the_length_fixed_before_writing_is_the_length_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("project/roles/x")).expect("dirs");
    std::fs::create_dir(root.join("empty")).expect("empty dir");
    std::fs::write(root.join("project/site.yml"), text_bytes(10_000)).expect("yml");
    std::fs::write(root.join("project/blob.bin"), random_bytes(500_000, 4)).expect("blob");
    std::fs::write(root.join("project/roles/x/empty"), b"").expect("empty file");
    std::fs::write(root.join("project/é-ünïcode.txt"), b"caf\xc3\xa9\n").expect("utf8 name");
    std::os::unix::fs::symlink("site.yml", root.join("project/link.yml")).expect("link");
    std::os::unix::fs::symlink("/nowhere", root.join("dangling")).expect("dangling");
    let script = root.join("project/run.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let zip = planned(root);
    let promised = zip.len();
    let bytes = written(zip);
    assert_eq!(bytes.len() as u64, promised);

    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let mut names: Vec<String> = archive
        .file_names()
        .map(|n| n.expect("name").into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dangling",
            "empty/",
            "project/",
            "project/blob.bin",
            "project/link.yml",
            "project/roles/",
            "project/roles/x/",
            "project/roles/x/empty",
            "project/run.sh",
            "project/site.yml",
            "project/é-ünïcode.txt",
        ]
    );
    let mode = |archive: &mut zip::ZipArchive<_>, name: &str| {
        archive
            .by_name(name)
            .expect(name)
            .unix_mode()
            .expect("mode")
    };
    assert_eq!(mode(&mut archive, "project/run.sh"), 0o100_750);
    assert_eq!(mode(&mut archive, "project/link.yml"), 0o120_777);
    assert_eq!(mode(&mut archive, "project/") & 0o170_000, 0o040_000);
    let read = |archive: &mut zip::ZipArchive<_>, name: &str| {
        let mut out = Vec::new();
        archive
            .by_name(name)
            .expect(name)
            .read_to_end(&mut out)
            .expect("read (CRC checked)");
        out
    };
    assert_eq!(read(&mut archive, "project/link.yml"), b"site.yml");
    assert_eq!(read(&mut archive, "dangling"), b"/nowhere");
    assert!(read(&mut archive, "project/blob.bin") == random_bytes(500_000, 4));
    assert_eq!(
        read(&mut archive, "project/é-ünïcode.txt"),
        b"caf\xc3\xa9\n"
    );
}

#[test]
fn the_stream_length_is_known_before_sending_and_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.bin"), random_bytes(100_001, 5)).expect("file");
    let kwargs = crate::ansible::kwargs::Kwargs::from(serde_json::Map::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let transmit = Transmit::prepare(dir.path(), &kwargs)
            .await
            .expect("prepare");
        let promised = transmit.stream_len();
        let mut stream = Vec::new();
        transmit.send(&mut stream).await.expect("send");
        assert_eq!(stream.len() as u64, promised);
        stream
    });
    let text = String::from_utf8(stream).expect("ascii");
    let encoded = text
        .split_once("}\n{\"zipfile\": ")
        .and_then(|(_, rest)| rest.split_once("}\n"))
        .and_then(|(_, rest)| rest.strip_suffix("{\"eof\": true}\n"))
        .expect("kwargs, zipfile, base64 glued to eof");
    let zip = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .expect("base64");
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("zip");
    assert_eq!(archive.len(), 1);
}

/// A record with the given sizes at `offset` (what the zip64 decisions look at).
fn record(size: u64, compressed: u64, offset: u64, descriptor: bool) -> Record {
    Record {
        name: "big".into(),
        mode: 0o100_644,
        time: DosTime::default(),
        method: Method::Stored,
        descriptor,
        crc: 0x1234_5678,
        size,
        compressed,
        offset,
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[test]
fn sizes_and_offsets_past_4_gib_use_zip64_fields() {
    let small = record(10, 10, 0, true);
    assert_eq!(small.local_header().len(), 30 + 3);
    assert_eq!(small.central_header().len(), 46 + 3);
    assert_eq!(small.descriptor().len(), 16);

    let five_gib = 5 << 30;
    let big = record(five_gib, five_gib, 6 << 30, true);
    let local = big.local_header();
    assert_eq!(local.len(), 30 + 3 + 20);
    assert_eq!(
        (u32_at(&local, 18), u32_at(&local, 22)),
        (u32::MAX, u32::MAX)
    );
    assert_eq!(u16_at(&local, 33), 0x0001);
    // With a descriptor the sizes in the local header are zero; they follow the data.
    assert_eq!((u64_at(&local, 37), u64_at(&local, 45)), (0, 0));
    let descriptor = big.descriptor();
    assert_eq!(descriptor.len(), 24);
    assert_eq!(
        (u64_at(&descriptor, 8), u64_at(&descriptor, 16)),
        (five_gib, five_gib)
    );
    let central = big.central_header();
    assert_eq!(central.len(), 46 + 3 + 4 + 24);
    assert_eq!(u32_at(&central, 42), u32::MAX);
    assert_eq!(u64_at(&central, 49 + 4), five_gib);
    assert_eq!(u64_at(&central, 49 + 12), five_gib);
    assert_eq!(u64_at(&central, 49 + 20), 6 << 30);

    // Only the offset overflows: the zip64 field holds just the offset.
    let late = record(10, 10, 5 << 30, false);
    assert_eq!(late.local_header().len(), 33);
    let central = late.central_header();
    assert_eq!(central.len(), 46 + 3 + 4 + 8);
    assert_eq!(u64_at(&central, 53), 5 << 30);

    assert_eq!(layout::end_records(3, 100, 1000).len(), 22);
    let end = layout::end_records(70_000, 100, 5 << 30);
    assert_eq!(end.len(), 56 + 20 + 22);
    assert_eq!(u64_at(&end, 24), 70_000);
    assert_eq!(u64_at(&end, 48), 5 << 30);
    assert_eq!(u64_at(&end, 56 + 8), (5 << 30) + 100);
}

#[test]
fn more_than_65535_entries_get_zip64_end_records_that_readers_accept() {
    let entries: Vec<Entry> = (0..70_000)
        .map(|i| Entry {
            name: format!("d{i}/"),
            mode: 0o040_755,
            time: DosTime::default(),
            body: Body::Dir,
        })
        .collect();
    let data = entries.iter().map(|_| Data::Stored).collect();
    let zip = Zip::new(entries, data);
    let promised = zip.len();
    let bytes = written(zip);
    assert_eq!(bytes.len() as u64, promised);
    let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.clone())).expect("zip");
    assert_eq!(archive.len(), 70_000);
    // Python's zipfile, which the real worker uses.
    let python = crate::ansible::testing::workspace_root().join(".venv/bin/python");
    let mut child = std::process::Command::new(python)
        .args([
            "-c",
            "import io,sys,zipfile; z=zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())); \
             print(len(z.infolist()), z.infolist()[-1].filename)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("feed");
    let out = child.wait_with_output().expect("python output");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "70000 d69999/\n");
}

#[test]
fn held_bytes_stay_within_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Text of 16 random letters deflates to a bit over half: 12 files of 64 KiB hold more
    // than the 256 KiB budget between them.
    for i in 0..12 {
        let mut bytes = random_bytes(64 * 1024, i);
        for b in &mut bytes {
            *b = b'a' + (*b % 16);
        }
        std::fs::write(dir.path().join(format!("f{i}.txt")), bytes).expect("file");
    }
    let zip = planned(dir.path());
    let held: u64 = zip
        .data()
        .iter()
        .map(|d| match d {
            Data::Held { bytes, .. } => bytes.len() as u64,
            _ => 0,
        })
        .sum();
    let again = zip
        .data()
        .iter()
        .filter(|d| matches!(d, Data::Again { .. }))
        .count();
    assert!(held <= SMALL_HOLDING.budget, "{held}");
    assert!(held > SMALL_HOLDING.budget / 2, "{held}");
    assert!(again > 0, "nothing was left to deflate while sent");
}

fn changed_path(error: &TransmitError) -> &Path {
    match error {
        TransmitError::Changed { path } => path,
        other => panic!("not a change: {other}"),
    }
}

#[test]
fn a_file_that_changes_after_planning_stops_the_zip_before_its_end() {
    type Change = fn(&Path);
    let changes: [(&str, &[u8], Change); 5] = [
        ("grows.bin", &random_bytes(200_000, 6), |p| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .expect("open");
            f.write_all(b"more").expect("append");
        }),
        ("shrinks.bin", &random_bytes(200_000, 7), |p| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .expect("open")
                .set_len(100)
                .expect("truncate");
        }),
        ("rewritten.bin", &random_bytes(200_000, 8), |p| {
            std::fs::write(p, random_bytes(200_000, 9)).expect("rewrite");
        }),
        ("replaced.yml", &text_bytes(100_000), |p| {
            let other = p.with_extension("new");
            std::fs::write(&other, text_bytes(100_000)).expect("new");
            std::fs::rename(&other, p).expect("rename");
        }),
        ("big.log", &text_bytes(1 << 20), |p| {
            let mut bytes = text_bytes(1 << 20);
            bytes[900_000] = b'#';
            std::fs::write(p, bytes).expect("rewrite");
        }),
    ];
    for (name, content, change) in changes {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("file");
        let zip = planned(dir.path());
        // mtime granularity: make sure a same-size rewrite is seen.
        std::thread::sleep(std::time::Duration::from_millis(10));
        change(&path);
        let mut out = Vec::new();
        let error = zip.write(&mut out).expect_err(name);
        assert_eq!(changed_path(&error), path, "{name}");
        assert!(
            !out.windows(4).any(|w| w == b"PK\x05\x06"),
            "{name}: the cut zip has an end record"
        );
    }
}
