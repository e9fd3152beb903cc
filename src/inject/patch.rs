//! The JSON Patch (RFC 6902) is built against the raw Pod JSON: every operation adds
//! to what is there, creating a missing map or array whole, so fields tracehook does
//! not know are never touched. Pointers are built from tokens, which escapes `~` and
//! `/` in keys such as `tracehook.dev/status`.

use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use serde_json::{Map, Value};

#[derive(Debug, Default)]
pub struct PatchBuilder {
    ops: Vec<PatchOperation>,
}

impl PatchBuilder {
    pub fn add(&mut self, tokens: &[&str], value: Value) {
        self.ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        }));
    }

    /// Replaces the value at `tokens`, which exists.
    pub fn replace(&mut self, tokens: &[&str], value: Value) {
        self.ops.push(PatchOperation::Replace(ReplaceOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        }));
    }

    /// Appends `items` to the array at `tokens`, whose current value is `current`.
    pub fn append(&mut self, current: Option<&Value>, tokens: &[&str], items: Vec<Value>) {
        if items.is_empty() {
            return;
        }
        match current {
            Some(Value::Array(_)) => {
                let mut end = tokens.to_vec();
                end.push("-");
                // One pointer for all the items: building it escapes every token.
                let path = PointerBuf::from_tokens(end);
                for value in items {
                    self.ops.push(PatchOperation::Add(AddOperation {
                        path: path.clone(),
                        value,
                    }));
                }
            }
            _ => self.add(tokens, Value::Array(items)),
        }
    }

    /// Sets `key` in the string map at `tokens` (labels, annotations), whose current
    /// value is `current`.
    pub fn insert(&mut self, current: Option<&Value>, tokens: &[&str], key: &str, value: Value) {
        match current {
            Some(Value::Object(_)) => {
                let mut path = tokens.to_vec();
                path.push(key);
                self.add(&path, value);
            }
            _ => {
                let mut map = Map::new();
                map.insert(key.to_owned(), value);
                self.add(tokens, Value::Object(map));
            }
        }
    }

    pub fn build(self) -> Patch {
        Patch(self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_tilde_and_slash_in_keys() {
        let mut b = PatchBuilder::default();
        b.insert(
            Some(&json!({})),
            &["metadata", "annotations"],
            "a~b/c",
            json!("v"),
        );
        let patch = serde_json::to_value(b.build()).expect("serializes");
        assert_eq!(patch[0]["path"], "/metadata/annotations/a~0b~1c");
    }

    #[test]
    fn creates_missing_maps_and_arrays_whole() {
        let mut b = PatchBuilder::default();
        b.insert(None, &["metadata", "labels"], "k", json!("v"));
        b.append(
            None,
            &["spec", "initContainers"],
            vec![json!({"name": "x"})],
        );
        let patch = serde_json::to_value(b.build()).expect("serializes");
        assert_eq!(
            patch,
            json!([
                {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
                {"op": "add", "path": "/spec/initContainers", "value": [{"name": "x"}]}
            ])
        );
    }
}
