//! The image `cargo xtask image` builds without Docker (tests/node/tracehook-image.sh)
//! and the `Dockerfile` must not drift: the same binary path, user, entrypoint, command
//! and ports as the Dockerfile's runtime stage, and what its base
//! (`gcr.io/distroless/cc-debian12:nonroot`) gives the binary: the glibc libraries it
//! links, CA certificates, the nonroot user, `/tmp`, and no shell.
//!
//! Built here from the test build of tracehook (the layout does not depend on the
//! profile); needs the node build's crane (tests/node/build.sh, run on demand).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const DOCKERFILE: &str = include_str!("../Dockerfile");

/// The runtime stage's instructions (everything after the last `FROM`), by keyword.
fn runtime_stage() -> Vec<(String, String)> {
    let lines: Vec<&str> = DOCKERFILE.lines().collect();
    let last = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    lines[last..]
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (keyword, rest) = l.split_once(' ')?;
            Some((keyword.to_owned(), rest.trim().to_owned()))
        })
        .collect()
}

fn instruction<'a>(stage: &'a [(String, String)], keyword: &str) -> &'a str {
    stage
        .iter()
        .find(|(k, _)| k == keyword)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the Dockerfile's runtime stage has no {keyword}"))
}

/// A JSON-form instruction (`["a", "b"]`) as its words.
fn words(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// (config, file paths) of the single-layer image in `tar`; the layer is written to
/// `layer_path`.
fn inspect(tar: &Path, layer_path: &Path) -> (Value, BTreeSet<String>) {
    let list = |args: &[&str]| {
        let out = Command::new("tar").args(args).output().expect("tar runs");
        assert!(out.status.success(), "tar {args:?}");
        out.stdout
    };
    let tar = tar.to_str().expect("a UTF-8 path");
    let manifest: Value =
        serde_json::from_slice(&list(&["-xOf", tar, "manifest.json"])).expect("manifest.json");
    let config_name = manifest[0]["Config"].as_str().expect("Config");
    let config: Value =
        serde_json::from_slice(&list(&["-xOf", tar, config_name])).expect("the config");
    let layers = manifest[0]["Layers"].as_array().expect("Layers");
    assert_eq!(layers.len(), 1, "one layer");
    let layer = list(&["-xOf", tar, layers[0].as_str().expect("a layer")]);
    std::fs::write(layer_path, &layer).expect("layer written");
    // `-a`: gzip or not, as the layer is.
    let names =
        String::from_utf8(list(&["-taf", layer_path.to_str().expect("path")])).expect("names");
    let files = names
        .lines()
        .map(|n| format!("/{}", n.trim_start_matches("./").trim_end_matches('/')))
        .collect();
    (config, files)
}

#[test]
fn the_image_puts_what_the_dockerfile_puts_where_it_puts_it() {
    let stage = runtime_stage();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tar = dir.path().join("tracehook.tar");
    let binary = env!("CARGO_BIN_EXE_tracehook");
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/node/tracehook-image.sh"
        ))
        .arg(binary)
        .arg(&tar)
        .arg("tracehook/tracehook:test")
        .output()
        .expect("tracehook-image.sh runs");
    assert!(
        out.status.success(),
        "tracehook-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layer = dir.path().join("layer.tar");
    let (config, files) = inspect(&tar, &layer);
    let c = &config["config"];

    // FROM gcr.io/distroless/cc-debian12:nonroot
    let from = instruction(&stage, "FROM");
    assert!(from.contains("distroless/cc-debian12:nonroot"), "{from}");
    // COPY --from=build /tracehook <path>
    let copy = instruction(&stage, "COPY");
    let path = copy.split_whitespace().last().expect("a destination");
    assert!(files.contains(path), "{path} not in the image");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(words(instruction(&stage, "ENTRYPOINT")))
    );
    assert_eq!(
        c["Entrypoint"][0], path,
        "the entrypoint is the copied binary"
    );
    assert_eq!(
        c["Cmd"],
        serde_json::json!(words(instruction(&stage, "CMD")))
    );
    assert_eq!(c["User"], instruction(&stage, "USER"));
    let exposed: BTreeSet<String> = c["ExposedPorts"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let dockerfile_ports: BTreeSet<String> = instruction(&stage, "EXPOSE")
        .split_whitespace()
        .map(|p| format!("{p}/tcp"))
        .collect();
    assert_eq!(exposed, dockerfile_ports);

    // What distroless/cc nonroot gives the binary.
    let ldd = Command::new("ldd").arg(binary).output().expect("ldd runs");
    let linked: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            match l.split_once(" => ") {
                Some((_, target)) => target.split_whitespace().next().map(str::to_owned),
                None => l
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/'))
                    .map(str::to_owned),
            }
        })
        .collect();
    assert!(
        linked.iter().any(|l| l.contains("libc.so")),
        "ldd: {linked:?}"
    );
    for lib in &linked {
        assert!(
            files.contains(lib),
            "{lib}, which the binary links, is not in the image"
        );
    }
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/passwd",
        "/etc/group",
        "/tmp",
        "/home/nonroot",
    ] {
        assert!(files.contains(path), "{path} not in the image");
    }
    for shell in ["/bin/sh", "/bin/bash", "/bin/busybox"] {
        assert!(
            !files.contains(shell),
            "{shell} in the image: no shell, as distroless"
        );
    }
    let passwd = Command::new("tar")
        .args(["-xaOf", layer.to_str().expect("path"), "./etc/passwd"])
        .output()
        .expect("tar runs");
    let passwd = String::from_utf8_lossy(&passwd.stdout);
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
}
