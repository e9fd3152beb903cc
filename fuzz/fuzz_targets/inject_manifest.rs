//! `tracehook inject`'s document handling on arbitrary text: parse YAML/JSON streams,
//! inject every pod template; what comes out must go back in unchanged (the marker
//! makes injection idempotent) and serialize as YAML.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tracehook::inject::{InstanceRef, Settings};
use tracehook::inject_command::{self, Options};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let default = InstanceRef::new("obs", "test");
    let options = Options {
        settings: Settings {
            native_sidecars: data.len().is_multiple_of(2),
            ..Settings::default()
        },
        instance: (!data.len().is_multiple_of(3)).then_some(default),
        flavor: None,
        // Unknown for half the inputs: the downward-API path.
        namespace: data.len().is_multiple_of(5).then(|| "default".to_owned()),
    };
    let Ok((docs, _)) = inject_command::inject_values(text, &options) else {
        return;
    };
    // What the command prints, fed back in, comes out unchanged.
    let yaml = inject_command::to_yaml(&docs).expect("the output serializes as YAML");
    let (again, _) = inject_command::inject_values(&yaml, &options)
        .unwrap_or_else(|e| panic!("the output does not parse back: {e}\n{yaml}"));
    assert_eq!(again, docs, "injecting the output changed it:\n{yaml}");
});
