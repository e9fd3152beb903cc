//! `tracehook inject` reads and writes YAML as kubectl does: a differential test against
//! kubectl's own reader.
//!
//! `tests/yaml11/build.sh` builds `yaml2json` from the Go modules kubectl v1.35.4 is built
//! with (apimachinery's YAMLOrJSONDecoder and sigs.k8s.io/yaml, goyaml v2), cached
//! outside the clone. It needs Go: without it, or when the build fails, these tests fail.
//!
//! Over a corpus of tricky scalars (generated below, in values and keys, plain and
//! quoted) and the streams in `tests/data/yaml11/`:
//! - tracehook reads every document as the same JSON value kubectl does (or refuses
//!   what kubectl refuses);
//! - kubectl reads tracehook's output as the same JSON values it read from the input.
//!   The corpus holds no document that `inject` changes (kinds it leaves alone, Pods
//!   annotated `tracehook.dev/inject: "false"`), so the output must equal the input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use tracehook::inject::{InstanceRef, Settings};
use tracehook::inject_command::{self, Options};

mod common;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The path of kubectl's reader, built once per test binary.
fn yaml2json() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(ROOT).join("tests/yaml11/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tests/yaml11/build.sh failed (Go is needed to build kubectl's YAML reader):\n{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        assert!(
            path.is_file(),
            "tests/yaml11/build.sh printed no binary: {stdout}"
        );
        path
    })
}

/// kubectl's reading of each input: its documents as JSON, or its error.
fn kubectl_reads(inputs: &[String]) -> Vec<Result<Vec<Value>, String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths: Vec<PathBuf> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.path().join(format!("{i}.yaml"));
            std::fs::write(&path, text).expect("write input");
            path
        })
        .collect();
    let out = Command::new(yaml2json())
        .args(&paths)
        .output()
        .expect("yaml2json runs");
    assert!(
        out.status.success(),
        "yaml2json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("yaml2json prints JSON"))
        .collect();
    assert_eq!(lines.len(), inputs.len(), "one line per input");
    lines
        .into_iter()
        .map(|line| match (line.get("documents"), line.get("error")) {
            (Some(Value::Array(docs)), _) => Ok(docs.clone()),
            (_, Some(Value::String(e))) => Err(e.clone()),
            _ => panic!("unexpected yaml2json line {line}"),
        })
        .collect()
}

/// JSON values compared as the API server receives them: through JSON text.
fn as_json(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .map(|d| serde_json::from_str(&serde_json::to_string(d).expect("JSON")).expect("JSON"))
        .collect()
}

fn options() -> Options {
    Options {
        settings: Settings::default(),
        instance: Some(InstanceRef::new("obs", "test")),
        flavor: None,
        namespace: Some("default".to_owned()),
    }
}

/// What `tracehook inject` prints for the input (as the command does, in process).
fn tracehook_output(input: &str) -> Result<String, String> {
    let (docs, _) = inject_command::inject_values(input, &options()).map_err(|e| e.to_string())?;
    inject_command::to_yaml(&docs).map_err(|e| e.to_string())
}

/// Single- and double-quoted spellings of a scalar.
fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn double_quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Scalars that YAML 1.1 (goyaml v2) and YAML 1.2 read differently, or that are easy to
/// get wrong either way.
const SCALARS: &[&str] = &[
    // Octal file modes, as kubectl reads them.
    "0755",
    "0400",
    "0644",
    "0600",
    "0o755",
    "0O17",
    "-0755",
    "+0755",
    "0_755",
    "00",
    "0",
    "08",
    "09",
    "0755.5",
    "-0",
    // Hexadecimal and binary.
    "0x1F",
    "0X1f",
    "-0x1F",
    "+0x1F",
    "0x",
    "0x_1F",
    "0xFFFFFFFFFFFFFFFF",
    "0x1FFFFFFFFFFFFFFFF",
    "0b101",
    "-0b101",
    "0b-101",
    "0B11",
    // Floats.
    "1e3",
    "1E3",
    "1e+3",
    "1e-3",
    "1.5e3",
    ".5",
    "-.5",
    "+.5",
    "1.",
    "1.0",
    "-0.0",
    "1e400",
    "1e-400",
    "1.5e300",
    "3.14159265358979",
    "1e21",
    "1e20",
    "2e19",
    "1e-7",
    "-.inf",
    ".inf",
    "+.inf",
    ".Inf",
    "-.INF",
    ".nan",
    ".NaN",
    ".iNf",
    "inf",
    "nan",
    "1e",
    "e3",
    // Integers.
    "1_000",
    "1__000",
    "_1000",
    "1_",
    "+12",
    "-12",
    "12345678901234567890",
    "123456789012345678901234567890",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "1,000",
    // Booleans.
    "yes",
    "no",
    "on",
    "off",
    "Yes",
    "No",
    "ON",
    "OFF",
    "y",
    "n",
    "Y",
    "N",
    "true",
    "false",
    "True",
    "FALSE",
    "yEs",
    "oN",
    "tRUE",
    "nO",
    // Nulls.
    "~",
    "null",
    "Null",
    "NULL",
    "nUll",
    // Dates and times stay strings.
    "2001-12-14",
    "2001-12-14T21:59:43.10Z",
    "2001-12-14t21:59:43.10-05:00",
    "2001-12-14 21:59:43.10",
    "2002-2-30",
    "1:20",
    "190:20:30.15",
    // Others.
    "<<",
    "=",
    "-",
    "+",
    ".",
    "+0",
    "0.",
    "v1",
    "100m",
    "1Gi",
    "512Mi",
    "1.5Gi",
];

/// One stream using the scalar as a value in fields kubectl users write: labels,
/// annotations, ConfigMap data, and a Pod's env, memory and defaultMode. No document is
/// changed by `inject`.
fn values_case(v: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: scalars
  labels:
    l: {v}
  annotations:
    a: {v}
data:
  d: {v}
  list:
    - {v}
---
apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    tracehook.dev/inject: \"false\"
    a: {v}
spec:
  containers:
    - name: c
      image: registry.example/c:1
      env:
        - name: E
          value: {v}
      resources:
        limits:
          memory: {v}
  volumes:
    - name: key
      secret:
        secretName: key
        defaultMode: {v}
"
    )
}

/// The scalar as a map key (a stream of its own: kubectl refuses some keys).
fn key_case(v: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keys\ndata:\n  {v}: value\n  other: x\n"
    )
}

fn generated_corpus() -> Vec<(String, String)> {
    let mut cases = Vec::new();
    for s in SCALARS {
        for (style, spelled) in [
            ("plain", (*s).to_owned()),
            ("single-quoted", single_quoted(s)),
            ("double-quoted", double_quoted(s)),
        ] {
            cases.push((format!("{spelled} ({style} value)"), values_case(&spelled)));
            cases.push((format!("{spelled} ({style} key)"), key_case(&spelled)));
        }
    }
    // Empty scalars: a value left out, and quoted empty strings.
    cases.push(("an empty value".to_owned(), values_case("")));
    cases.push(("'' (key)".to_owned(), key_case("''")));
    cases
}

fn file_corpus() -> Vec<(String, String)> {
    let dir = Path::new(ROOT).join("tests/data/yaml11");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/yaml11")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                text,
            )
        })
        .collect()
}

/// (a): tracehook reads every case as kubectl does, or refuses what kubectl refuses.
fn check_reading(cases: &[(String, String)]) {
    let inputs: Vec<String> = cases.iter().map(|(_, text)| text.clone()).collect();
    let kubectl = kubectl_reads(&inputs);
    let mut differences = Vec::new();
    let mut read = 0;
    for ((name, text), kubectl) in cases.iter().zip(kubectl) {
        let ours = inject_command::parse(text).map(|d| as_json(&d));
        match (&kubectl, &ours) {
            (Ok(k), Ok(t)) if k == t => read += 1,
            (Err(_), Err(_)) => {}
            _ => differences.push(format!(
                "{name}:\n  kubectl:   {}\n  tracehook: {}",
                match &kubectl {
                    Ok(d) => serde_json::to_string(d).unwrap_or_default(),
                    Err(e) => format!("error: {e}"),
                },
                match &ours {
                    Ok(d) => serde_json::to_string(d).unwrap_or_default(),
                    Err(e) => format!("error: {e}"),
                }
            )),
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} cases read differently:\n{}",
        differences.len(),
        cases.len(),
        differences.join("\n")
    );
    assert!(read * 2 > cases.len(), "most cases are readable: {read}");
}

/// (b): kubectl reads tracehook's output as it read the input.
fn check_writing(cases: &[(String, String)]) {
    let inputs: Vec<String> = cases.iter().map(|(_, text)| text.clone()).collect();
    let before = kubectl_reads(&inputs);
    let readable: Vec<(&String, Vec<Value>, String)> = cases
        .iter()
        .zip(before)
        .filter_map(|((name, text), before)| {
            let before = before.ok()?;
            let output = tracehook_output(text)
                .unwrap_or_else(|e| panic!("{name}: kubectl reads it, tracehook refuses: {e}"));
            Some((name, before, output))
        })
        .collect();
    assert!(readable.len() * 2 > cases.len(), "most cases are readable");
    let outputs: Vec<String> = readable.iter().map(|(_, _, out)| out.clone()).collect();
    let after = kubectl_reads(&outputs);
    let mut differences = Vec::new();
    for ((name, before, output), after) in readable.iter().zip(after) {
        match after {
            Ok(after) if &after == before => {}
            after => differences.push(format!(
                "{name}:\n  kubectl read the input as  {}\n  and tracehook's output as {}\n  output:\n{output}",
                serde_json::to_string(before).unwrap_or_default(),
                match after {
                    Ok(d) => serde_json::to_string(&d).unwrap_or_default(),
                    Err(e) => format!("error: {e}"),
                }
            )),
        }
    }
    assert!(
        differences.is_empty(),
        "kubectl reads {} of {} outputs differently:\n{}",
        differences.len(),
        readable.len(),
        differences.join("\n")
    );
}

#[test]
fn kubectl_reader_reads_yaml_1_1() {
    // The reference itself: if this fails, the differential tests below prove nothing.
    let read = kubectl_reads(&[
        "a: 0755\nb: 0400\nc: 1e3\nd: yes\ne: \"on\"\nf: 0x1F\ng: ~\nh: 2001-12-14\n0755: k\n"
            .to_owned(),
        "a: .inf\n".to_owned(),
    ]);
    assert_eq!(
        read[0].as_ref().expect("readable")[0],
        serde_json::json!({"a": 493, "b": 256, "c": 1000, "d": true, "e": "on", "f": 31, "g": null, "h": "2001-12-14", "493": "k"})
    );
    assert!(read[1].is_err(), "kubectl refuses infinity");
}

#[test]
fn tracehook_reads_tricky_scalars_as_kubectl_does() {
    check_reading(&generated_corpus());
}

#[test]
fn kubectl_reads_tracehooks_output_of_tricky_scalars_as_the_input() {
    check_writing(&generated_corpus());
}

#[test]
fn tracehook_reads_the_yaml11_streams_as_kubectl_does() {
    let cases = file_corpus();
    assert!(
        cases.len() >= 5,
        "tests/data/yaml11 has {} streams",
        cases.len()
    );
    check_reading(&cases);
}

#[test]
fn kubectl_reads_tracehooks_output_of_the_yaml11_streams_as_the_input() {
    check_writing(&file_corpus());
}

#[test]
fn the_command_prints_what_kubectl_reads_as_the_input() {
    // The same check through the binary as users run it, on the shape.
    let input = std::fs::read_to_string(Path::new(ROOT).join("tests/data/yaml11/modes.yaml"))
        .expect("modes.yaml");
    let out = common::tracehook(&["inject", "-f", "-"], &input);
    common::assert_success(&out);
    let output = String::from_utf8(out.stdout).expect("utf-8");
    let read = kubectl_reads(&[input, output.clone()]);
    let before = read[0].as_ref().expect("kubectl reads the input");
    assert_eq!(
        read[1].as_ref().expect("kubectl reads the output"),
        before,
        "{output}"
    );
    assert_eq!(
        before[0].pointer("/spec/volumes/0/secret/defaultMode"),
        Some(&Value::from(256))
    );
}

/// Strings of characters that YAML writers get wrong (indicators, quotes, blank lines,
/// tabs, separators, long lines that may be folded), from a fixed seed.
fn random_strings(count: usize) -> Vec<String> {
    const ALPHABET: &[char] = &[
        ' ', ' ', ' ', '\t', '\n', '\n', '\r', 'a', 'b', 'y', 'e', 's', 'o', 'n', '0', '7', '5',
        '1', 'x', '.', '_', ':', '#', '-', '?', '\'', '"', '\\', '~', '|', '>', '{', '[', ']', ',',
        '&', '*', '!', '%', '@', '`', '=', '<', 'é', '名', '\u{2028}', '\u{85}', '\u{a0}',
    ];
    // Without the characters that force double quotes: block scalars get chosen.
    const BLOCK_FRIENDLY: &[char] = &[
        ' ', ' ', '\t', '\n', '\n', 'a', 'b', 'y', 'e', 's', '0', '7', ':', '#', '-', '|', '>',
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|i| {
            // Mostly short; every fifth up to 300 characters, for folding.
            let max = if i % 5 == 0 { 300 } else { 24 };
            let len = usize::try_from(next() % max).unwrap_or(0);
            let alphabet = if i % 2 == 0 { ALPHABET } else { BLOCK_FRIENDLY };
            (0..len)
                .map(|_| alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap_or(0)])
                .collect()
        })
        .collect()
}

#[test]
fn kubectl_reads_random_strings_as_tracehook_writes_them() {
    // Each input is JSON (which kubectl and tracehook read alike); the output is YAML.
    let cases: Vec<(String, String)> = random_strings(400)
        .into_iter()
        .map(|s| {
            let doc = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "random", "annotations": {"a": s}},
                "data": {"value": s, s.clone(): "as a key"},
            });
            (format!("{s:?}"), doc.to_string())
        })
        .collect();
    check_reading(&cases);
    check_writing(&cases);
}

#[test]
fn output_fed_back_in_is_unchanged_for_the_fuzz_corpus() {
    // The inject_manifest fuzz target's property, over its committed corpus, with the
    // writer the command uses.
    let dir = Path::new(ROOT).join("fuzz/corpus/inject_manifest");
    let mut readable = 0;
    let mut changed = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/inject_manifest") {
        let data = std::fs::read(entry.expect("entry").path()).expect("readable");
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        let Ok((docs, _)) = inject_command::inject_values(text, &options()) else {
            continue;
        };
        readable += 1;
        let yaml = inject_command::to_yaml(&docs).expect("writes");
        match inject_command::inject_values(&yaml, &options()) {
            Ok((again, _)) if again == docs => {}
            other => changed.push(format!("{text:?}\n{yaml}\n{:?}", other.map(|(d, _)| d))),
        }
    }
    assert!(readable >= 100, "only {readable} readable inputs");
    assert!(changed.is_empty(), "{}", changed.join("\n---\n"));
}
