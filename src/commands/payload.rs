//! Each command type's payload: its schema (in `/openapi.json` as `CommandPayload`, one
//! variant per type) and its validation. A payload is parsed as its type's struct (unknown
//! fields refused, 422 naming `payload.<field>`) and then checked field by field; what is
//! stored and sent to the device is the normalised struct, never the raw input.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::from_value;
use herd_domain::status::CommandType;

/// Largest `custom` payload and largest device result, as serialised JSON.
pub(crate) const MAX_CUSTOM_PAYLOAD: usize = 16 * 1024;
const MAX_URL: usize = 2048;
const MAX_PACKAGE: usize = 255;
const MAX_CUSTOM_NAME: usize = 64;

/// `reboot`, `screenshot`: no parameters (`{}` or no payload).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmptyPayload {}

/// `restart_app`, `clear_cache`: the app concerned (an Android package name); absent means the
/// device's own managed app (for `clear_cache`: every app's cache).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct OptionalAppPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// `launch_app`: bring this app to the foreground.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LaunchAppPayload {
    /// An Android package name such as `com.example.signage`.
    pub package: String,
}

/// `open_url`: show this page (http or https).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct OpenUrlPayload {
    pub url: String,
}

/// `set_volume`: percent, 0–100.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SetVolumePayload {
    #[schema(minimum = 0, maximum = 100)]
    pub volume: i64,
}

/// `set_brightness`: percent, 0–100.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SetBrightnessPayload {
    #[schema(minimum = 0, maximum = 100)]
    pub brightness: i64,
}

/// `install_package`: download the artifact at `url`, check its SHA-256, install it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct InstallPackagePayload {
    /// Where to download it (http or https; a herd download route or a signed URL).
    pub url: String,
    /// Lowercase hex SHA-256 of the artifact; the device must refuse bytes that do not match.
    pub sha256: String,
    /// Size in bytes, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// The Android package name the artifact installs, if it is an app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_name: Option<String>,
    /// The version code the device should report after installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_code: Option<i64>,
}

/// `custom`: a vendor extension, passed to the device as is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CustomPayload {
    /// The vendor's command name: 1–64 of `a-z 0-9 . _ -`.
    pub name: String,
    /// Any JSON, at most 16 KiB serialised.
    #[serde(default)]
    pub payload: Value,
}

/// A command's payload; which variant applies is given by the command's `type`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum CommandPayload {
    /// `launch_app`
    LaunchApp(LaunchAppPayload),
    /// `open_url`
    OpenUrl(OpenUrlPayload),
    /// `set_volume`
    SetVolume(SetVolumePayload),
    /// `set_brightness`
    SetBrightness(SetBrightnessPayload),
    /// `install_package`
    InstallPackage(InstallPackagePayload),
    /// `custom`
    Custom(CustomPayload),
    /// `restart_app`, `clear_cache`
    OptionalApp(OptionalAppPayload),
    /// `reboot`, `screenshot`
    Empty(EmptyPayload),
}

/// Parses and checks `payload` for `command_type` (an absent payload is `{}`), returning the
/// normalised payload as it is stored and sent.
pub(crate) fn validate(command_type: CommandType, payload: Option<Value>) -> Result<Value, ApiError> {
    let payload = match payload {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(value) => value,
    };
    let mut errors = FieldErrors::new();
    let normalised = match command_type {
        CommandType::Reboot | CommandType::Screenshot => to_value(from_value::<EmptyPayload>(payload, "payload")?),
        CommandType::RestartApp | CommandType::ClearCache => {
            let parsed: OptionalAppPayload = from_value(payload, "payload")?;
            if let Some(package) = &parsed.package {
                check_package(&mut errors, "payload.package", package);
            }
            to_value(parsed)
        }
        CommandType::LaunchApp => {
            let parsed: LaunchAppPayload = from_value(payload, "payload")?;
            check_package(&mut errors, "payload.package", &parsed.package);
            to_value(parsed)
        }
        CommandType::OpenUrl => {
            let parsed: OpenUrlPayload = from_value(payload, "payload")?;
            check_url(&mut errors, "payload.url", &parsed.url);
            to_value(parsed)
        }
        CommandType::SetVolume => {
            let parsed: SetVolumePayload = from_value(payload, "payload")?;
            if !(0..=100).contains(&parsed.volume) {
                errors.add("payload.volume", "must be a percentage between 0 and 100");
            }
            to_value(parsed)
        }
        CommandType::SetBrightness => {
            let parsed: SetBrightnessPayload = from_value(payload, "payload")?;
            if !(0..=100).contains(&parsed.brightness) {
                errors.add("payload.brightness", "must be a percentage between 0 and 100");
            }
            to_value(parsed)
        }
        CommandType::InstallPackage => {
            let parsed: InstallPackagePayload = from_value(payload, "payload")?;
            check_url(&mut errors, "payload.url", &parsed.url);
            if parsed.sha256.len() != 64
                || !parsed.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                errors.add("payload.sha256", "must be 64 lowercase hexadecimal characters");
            }
            if parsed.size.is_some_and(|size| size < 0) {
                errors.add("payload.size", "must not be negative");
            }
            if parsed.version_code.is_some_and(|code| code < 0) {
                errors.add("payload.versionCode", "must not be negative");
            }
            if let Some(package) = &parsed.package_name {
                check_package(&mut errors, "payload.packageName", package);
            }
            to_value(parsed)
        }
        CommandType::Custom => {
            let parsed: CustomPayload = from_value(payload, "payload")?;
            let name_ok = (1..=MAX_CUSTOM_NAME).contains(&parsed.name.len())
                && parsed.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if !name_ok {
                errors.add("payload.name", "must be 1–64 characters of a-z, 0-9, '.', '_' and '-'");
            }
            if parsed.payload.to_string().len() > MAX_CUSTOM_PAYLOAD {
                errors.add("payload.payload", format!("must be at most {MAX_CUSTOM_PAYLOAD} bytes of JSON"));
            }
            to_value(parsed)
        }
    };
    errors.finish()?;
    Ok(normalised)
}

fn to_value<T: Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn check_url(errors: &mut FieldErrors, field: &str, url: &str) {
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    let host = url.split_once("://").map_or("", |(_, rest)| rest);
    if !scheme_ok || host.is_empty() || host.starts_with('/') {
        errors.add(field, "must be an absolute http or https URL");
    } else if url.len() > MAX_URL {
        errors.add(field, format!("must be at most {MAX_URL} characters"));
    } else if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        errors.add(field, "must not contain spaces or control characters");
    }
}

/// Java package naming: two or more dot-separated identifiers of letters, digits and `_`, each
/// starting with a letter.
pub(crate) fn check_package(errors: &mut FieldErrors, field: &str, package: &str) {
    let parts: Vec<&str> = package.split('.').collect();
    let valid = package.len() <= MAX_PACKAGE
        && parts.len() >= 2
        && parts.iter().all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid {
        errors.add(field, "must be an Android package name such as com.example.signage");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(error: ApiError) -> Vec<String> {
        match error {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn each_type_checks_its_own_fields() {
        let cases = [
            (CommandType::SetVolume, json!({"volume": 101}), "payload.volume"),
            (CommandType::SetVolume, json!({}), "payload.volume"),
            (CommandType::SetBrightness, json!({"brightness": -1}), "payload.brightness"),
            (CommandType::LaunchApp, json!({"package": "nodots"}), "payload.package"),
            (CommandType::OpenUrl, json!({"url": "javascript:alert(1)"}), "payload.url"),
            (CommandType::Reboot, json!({"force": true}), "payload.force"),
            (CommandType::InstallPackage, json!({"url": "https://x.example/a.apk", "sha256": "AB"}), "payload.sha256"),
            (CommandType::Custom, json!({"name": "Bad Name"}), "payload.name"),
            (CommandType::ClearCache, json!({"package": 5}), "payload.package"),
        ];
        for (command_type, payload, field) in cases {
            let error = validate(command_type, Some(payload.clone())).unwrap_err();
            assert_eq!(field_of(error), vec![field.to_string()], "{command_type:?} {payload}");
        }
    }

    #[test]
    fn valid_payloads_are_normalised() {
        assert_eq!(validate(CommandType::Reboot, None).unwrap(), json!({}));
        assert_eq!(validate(CommandType::SetVolume, Some(json!({"volume": 30}))).unwrap(), json!({"volume": 30}));
        assert_eq!(validate(CommandType::ClearCache, Some(json!({}))).unwrap(), json!({}));
        let custom = validate(CommandType::Custom, Some(json!({"name": "acme.led", "payload": {"on": true}}))).unwrap();
        assert_eq!(custom, json!({"name": "acme.led", "payload": {"on": true}}));
    }

    #[test]
    fn custom_payloads_are_bounded() {
        let big = "x".repeat(MAX_CUSTOM_PAYLOAD);
        let error = validate(CommandType::Custom, Some(json!({"name": "acme", "payload": big}))).unwrap_err();
        assert_eq!(field_of(error), vec!["payload.payload".to_string()]);
    }
}
