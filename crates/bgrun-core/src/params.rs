//! Component parameters: what a component declares, and validation of what a client sends.
//!
//! Clients send parameters as JSON values or as form strings; both are accepted the same way.
//! Booleans: JSON booleans, or `true`/`false`/`1`/`0` in any case. Integers: JSON integers or
//! base-10 integer strings, within the declared range.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::InvalidInput;

/// The type of a parameter and its bounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ParamKind {
    /// An integer within `min..=max`.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A boolean.
    Boolean,
    /// Any string.
    String,
}

/// One parameter a component takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamSpec {
    /// Its name, as sent by clients.
    pub name: String,
    /// Its type.
    #[serde(flatten)]
    pub kind: ParamKind,
    /// Its value when the client sends none.
    pub default: Option<Value>,
    /// What it does.
    pub description: String,
}

impl ParamSpec {
    /// An integer parameter in `min..=max` with a default.
    pub fn integer(name: &str, min: i64, max: i64, default: i64, description: &str) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::Integer { min, max },
            default: Some(Value::from(default)),
            description: description.into(),
        }
    }

    /// A boolean parameter with a default.
    pub fn boolean(name: &str, default: bool, description: &str) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::Boolean,
            default: Some(Value::from(default)),
            description: description.into(),
        }
    }

    /// An optional string parameter.
    pub fn string(name: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            kind: ParamKind::String,
            default: None,
            description: description.into(),
        }
    }

    /// Checks and normalises one value sent for this parameter.
    pub fn coerce(&self, value: &Value) -> Result<Value, InvalidInput> {
        match &self.kind {
            ParamKind::Boolean => parse_bool(value).map(Value::from).ok_or_else(|| {
                InvalidInput::new(format!(
                    "parameter {:?} must be a boolean (true/false/1/0)",
                    self.name
                ))
            }),
            ParamKind::Integer { min, max } => match parse_int(value) {
                Some(number) if (*min..=*max).contains(&number) => Ok(Value::from(number)),
                Some(number) => Err(InvalidInput::new(format!(
                    "parameter {:?} is {number}, outside {min}..={max}",
                    self.name
                ))),
                None => Err(InvalidInput::new(format!(
                    "parameter {:?} must be an integer",
                    self.name
                ))),
            },
            ParamKind::String => match value {
                Value::String(text) => Ok(Value::String(text.clone())),
                _ => Err(InvalidInput::new(format!(
                    "parameter {:?} must be a string",
                    self.name
                ))),
            },
        }
    }
}

/// Parses a boolean sent as JSON or as a form string.
pub fn parse_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::Number(number) => match number.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(text) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Parses an integer sent as a JSON integer or a base-10 integer string.
pub fn parse_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.parse::<i64>().ok(),
        _ => None,
    }
}

/// Validates what a client sent against a component's declared parameters: every declared
/// parameter is present in the result (sent or default), undeclared ones are dropped.
pub fn validate_params(
    specs: &[ParamSpec],
    sent: &Map<String, Value>,
) -> Result<Map<String, Value>, InvalidInput> {
    let mut params = Map::new();
    for spec in specs {
        match sent.get(&spec.name) {
            Some(value) => {
                params.insert(spec.name.clone(), spec.coerce(value)?);
            }
            None => {
                if let Some(default) = &spec.default {
                    params.insert(spec.name.clone(), default.clone());
                }
            }
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::integer("count", 0, 10, 3, "how many"),
            ParamSpec::boolean("panic", false, "panic"),
        ]
    }

    #[test]
    fn values_are_coerced_and_defaults_filled() {
        let sent = json!({"count": "7", "panic": "TRUE", "other": 1});
        let params = validate_params(&specs(), sent.as_object().unwrap()).unwrap();
        assert_eq!(Value::Object(params), json!({"count": 7, "panic": true}));
        let params = validate_params(&specs(), &Map::new()).unwrap();
        assert_eq!(Value::Object(params), json!({"count": 3, "panic": false}));
    }

    #[test]
    fn bad_values_are_errors() {
        for sent in [
            json!({"count": "11"}),
            json!({"count": -1}),
            json!({"count": "1.5"}),
            json!({"count": 1.5}),
            json!({"count": true}),
            json!({"panic": "yes"}),
            json!({"panic": 2}),
        ] {
            assert!(
                validate_params(&specs(), sent.as_object().unwrap()).is_err(),
                "{sent}"
            );
        }
    }
}
