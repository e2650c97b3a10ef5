//! Device routes and their wire types (AutoRegisterDto, CreateDeviceDto, ConnectDeviceDto of
//! the seed, and the device record of DESIGN.md).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{
    ConnectReport, DeviceFilter, DeviceInfo, DevicePatch, DeviceRow, DeviceStore, Identifiers, Proof, RegisterError,
    Registration,
};
use crate::app::AppState;
use crate::auth::tokens::{self, TokenKind};
use crate::auth::{DeviceAuth, Enroller, Member, Role};
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, OptionalJson, PageParams, Validate};
use crate::http::{time, ListResponse};
use crate::ids::DeviceId;
use crate::presence::HeartbeatBuffer;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use herd_domain::status::DeviceStatus;
use herd_store::claims::Claimant;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_device, list_devices)).routes(routes!(
        get_device,
        update_device,
        delete_device
    ))
}

/// The routes a device calls: enrollment (with an enrollment token) and, with its own token,
/// heartbeats and reading itself.
pub(crate) fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(auto_register))
        .routes(routes!(registration_challenge))
        .routes(routes!(connect))
        .routes(routes!(get_self))
}

const MAX_TEXT: usize = 200;
const MAX_IDENTIFIER: usize = 128;

/// A device record (DESIGN.md).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceDto {
    pub id: String,
    pub name: String,
    pub serial_number: Option<String>,
    pub mac_address: Option<String>,
    pub android_id: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub os_version: Option<String>,
    pub app_version: Option<String>,
    pub firmware_version: Option<String>,
    pub ip_address: Option<String>,
    pub location: Option<String>,
    pub tags: Vec<String>,
    pub status: DeviceStatus,
    pub last_seen: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<DeviceRow> for DeviceDto {
    fn from(row: DeviceRow) -> Self {
        Self {
            id: row.id.to_string(),
            name: row.name,
            serial_number: row.serial_number,
            mac_address: row.mac_address,
            android_id: row.android_id,
            model: row.model,
            manufacturer: row.manufacturer,
            os_version: row.os_version,
            app_version: row.app_version,
            firmware_version: row.firmware_version,
            ip_address: row.ip_address,
            location: row.location,
            tags: row.tags.0,
            status: row.status,
            last_seen: row.last_seen.map(time),
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
        }
    }
}

/// A device and the secret it authenticates with from now on.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegisteredDevice {
    pub device: DeviceDto,
    /// The device's bearer token; shown once. Any earlier token of the device stops working.
    pub device_token: String,
}

/// AutoRegisterDto: hardware identifiers (at least one) and what the device says about itself.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AutoRegisterDto {
    pub serial_number: Option<String>,
    /// Six bytes in hex, with `:` or `-` separators or none; stored as `aa:bb:cc:dd:ee:ff`.
    pub mac_address: Option<String>,
    pub android_id: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub os_version: Option<String>,
    pub app_version: Option<String>,
    pub name: Option<String>,
    /// The device's own public key (`-----BEGIN PUBLIC KEY-----`, RSA 2048+ or ECDSA
    /// P-256/P-384), kept in its keystore. Recommended on the first registration: later
    /// re-registrations can then prove possession of it with `proof`.
    pub public_key: Option<String>,
    /// Proof by the device's current token, when it re-registers (e.g. to rotate it).
    pub device_token: Option<String>,
    /// Proof by the registered key: a signature over a challenge from
    /// `POST /devices/auto-register/challenge`.
    pub proof: Option<SignedChallenge>,
}

/// A challenge and the device's signature over its UTF-8 bytes (base64): RSA keys sign with
/// PKCS#1 v1.5 and SHA-256, P-256 keys with ECDSA and SHA-256, P-384 keys with ECDSA and
/// SHA-384 (DER-encoded ECDSA signatures).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SignedChallenge {
    pub challenge: String,
    pub signature: String,
}

impl Validate for AutoRegisterDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        check_identifiers(
            &mut errors,
            self.serial_number.as_deref(),
            self.mac_address.as_deref(),
            self.android_id.as_deref(),
        );
        if self.serial_number.is_none() && self.mac_address.is_none() && self.android_id.is_none() {
            for field in ["serialNumber", "macAddress", "androidId"] {
                errors.add(field, "at least one of serialNumber, macAddress or androidId is required");
            }
        }
        for (field, value) in [
            ("model", &self.model),
            ("manufacturer", &self.manufacturer),
            ("osVersion", &self.os_version),
            ("appVersion", &self.app_version),
            ("name", &self.name),
        ] {
            errors.text(field, value.as_deref(), MAX_TEXT);
        }
        if let Some(key) = &self.public_key {
            if let Err(error) = herd_pki::DeviceKey::from_pem(key) {
                errors.add("publicKey", error.to_string());
            }
        }
        if let Some(token) = &self.device_token {
            if TokenKind::of(token) != TokenKind::Device || token.len() > 512 {
                errors.add("deviceToken", "must be a device token");
            }
        }
        if let Some(proof) = &self.proof {
            if !proof.challenge.starts_with(CHALLENGE_PREFIX) || proof.challenge.len() > 128 {
                errors.add("proof.challenge", "must be a challenge from POST /devices/auto-register/challenge");
            }
            if proof.signature.len() > 2048 || BASE64.decode(proof.signature.trim()).is_err() {
                errors.add("proof.signature", "must be base64 (at most 2048 characters)");
            }
            if self.device_token.is_some() {
                errors.add("proof", "give deviceToken or proof, not both");
            }
        }
        errors.finish()
    }
}

/// What every challenge starts with (versioned, so the signed bytes can never be mistaken for
/// anything else the key signs).
pub(crate) const CHALLENGE_PREFIX: &str = "herd-register-v1.";
/// How long a challenge can be used.
const CHALLENGE_TTL: chrono::Duration = chrono::Duration::minutes(5);

/// CreateDeviceDto: an admin registers a device by hand.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateDeviceDto {
    pub name: String,
    pub serial_number: Option<String>,
    pub mac_address: Option<String>,
    pub android_id: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub location: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Validate for CreateDeviceDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("name", Some(&self.name), MAX_TEXT);
        check_identifiers(
            &mut errors,
            self.serial_number.as_deref(),
            self.mac_address.as_deref(),
            self.android_id.as_deref(),
        );
        for (field, value) in
            [("model", &self.model), ("manufacturer", &self.manufacturer), ("location", &self.location)]
        {
            errors.text(field, value.as_deref(), MAX_TEXT);
        }
        errors.tags("tags", &self.tags);
        errors.finish()
    }
}

/// ConnectDeviceDto: what a device reports when it checks in. Every field is optional, and
/// so is the body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectDeviceDto {
    pub ip_address: Option<String>,
    pub app_version: Option<String>,
    pub os_version: Option<String>,
    pub firmware_version: Option<String>,
}

impl Validate for ConnectDeviceDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if let Some(ip) = &self.ip_address {
            if ip.parse::<IpAddr>().is_err() {
                errors.add("ipAddress", "must be an IPv4 or IPv6 address");
            }
        }
        for (field, value) in [
            ("appVersion", &self.app_version),
            ("osVersion", &self.os_version),
            ("firmwareVersion", &self.firmware_version),
        ] {
            errors.text(field, value.as_deref(), MAX_TEXT);
        }
        errors.finish()
    }
}

/// What `POST /devices/connect` answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectResponse {
    pub device: DeviceDto,
    pub server_time: DateTime<Utc>,
    /// How many commands wait for this device: when above zero, fetch them with
    /// `GET /devices/self/commands` (see docs/device-protocol.md).
    pub pending_commands: i64,
}

/// A partial update: absent fields stay, `null` clears an optional field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateDeviceDto {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub serial_number: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub mac_address: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub android_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub model: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub manufacturer: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub location: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

impl Validate for UpdateDeviceDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("name", self.name.as_deref(), MAX_TEXT);
        check_identifiers(
            &mut errors,
            self.serial_number.as_ref().and_then(|v| v.as_deref()),
            self.mac_address.as_ref().and_then(|v| v.as_deref()),
            self.android_id.as_ref().and_then(|v| v.as_deref()),
        );
        for (field, value) in
            [("model", &self.model), ("manufacturer", &self.manufacturer), ("location", &self.location)]
        {
            errors.text(field, value.as_ref().and_then(|v| v.as_deref()), MAX_TEXT);
        }
        if let Some(tags) = &self.tags {
            errors.tags("tags", tags);
        }
        errors.finish()
    }
}

fn check_identifiers(errors: &mut FieldErrors, serial: Option<&str>, mac: Option<&str>, android_id: Option<&str>) {
    errors.text("serialNumber", serial, MAX_IDENTIFIER);
    errors.text("androidId", android_id, MAX_IDENTIFIER);
    if let Some(mac) = mac {
        if normalize_mac(mac).is_none() {
            errors.add("macAddress", "must be six bytes in hex, e.g. aa:bb:cc:dd:ee:ff");
        }
    }
}

/// `AA-BB-CC-DD-EE-FF`, `aabbccddeeff` and `aa:bb:cc:dd:ee:ff` are one address.
pub(crate) fn normalize_mac(mac: &str) -> Option<String> {
    let hex: String = mac.trim().chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    Some(
        lower.as_bytes().chunks(2).map(|pair| String::from_utf8_lossy(pair).into_owned()).collect::<Vec<_>>().join(":"),
    )
}

fn clean(value: &Option<String>) -> Option<String> {
    value.as_deref().map(|v| v.trim().to_string())
}

fn identifier_conflict(error: crate::store::StoreError) -> ApiError {
    for (needle, field) in
        [("serial_number", "serialNumber"), ("mac_address", "macAddress"), ("android_id", "androidId")]
    {
        if error.is_unique_on(needle) {
            return ApiError::Conflict(format!("another device in this tenant already has this {field}"));
        }
    }
    error.into()
}

/// What a registration that matches an existing device without proof answers: the claim
/// and the token that will work once an operator approves it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PendingRegistration {
    pub claim: super::claims::ClaimDto,
    /// Works only after the claim is approved; until then the device's calls answer 403
    /// (`awaiting approval`), after a rejection 401.
    pub device_token: String,
}

/// Register a device by its hardware identifiers (enrollment token, or operator and above).
/// New identifiers: 201. Identifiers of an existing device: 200 with a fresh token only with
/// proof (`deviceToken`, or `proof` signed by the registered `publicKey`; an operator's own
/// call counts as proof); without proof 202 and a pending claim, the device untouched.
#[utoipa::path(post, path = "/devices/auto-register", operation_id = "registerDevice", tag = "devices", security(("enrollmentToken" = [])), request_body = AutoRegisterDto,
    responses((status = 201, body = RegisteredDevice, description = "a new device"),
              (status = 200, body = RegisteredDevice, description = "the existing device, proven (its old token stops working)"),
              (status = 202, body = PendingRegistration, description = "identifiers of an existing device without proof: a pending claim"),
              (status = 401, description = "a proof was given and failed, or the enrollment token is used up; nothing changed")))]
async fn auto_register(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    enroller: Enroller,
    ApiJson(body): ApiJson<AutoRegisterDto>,
) -> Result<Response, ApiError> {
    let ids = Identifiers {
        serial_number: clean(&body.serial_number),
        mac_address: body.mac_address.as_deref().and_then(normalize_mac),
        android_id: clean(&body.android_id),
    };
    let info = DeviceInfo {
        name: clean(&body.name),
        model: clean(&body.model),
        manufacturer: clean(&body.manufacturer),
        os_version: clean(&body.os_version),
        app_version: clean(&body.app_version),
        location: None,
        tags: Vec::new(),
    };
    // Stored in one canonical form whatever whitespace or line length the device sent.
    let public_key =
        body.public_key.as_deref().and_then(|pem| herd_pki::DeviceKey::from_pem(pem).ok()).map(|k| k.to_pem());
    let enrollment = match &enroller {
        Enroller::Token { token_id, .. } => Some(*token_id),
        Enroller::Member { .. } => None,
    };
    let store = DeviceStore::new(enroller.scope());
    let secret = tokens::generate(TokenKind::Device);
    let hash = tokens::hash(&secret);
    let presented_hash = body.device_token.as_deref().map(tokens::hash);
    let signature =
        body.proof.as_ref().and_then(|proof| BASE64.decode(proof.signature.trim()).ok()).unwrap_or_default();
    let verify = |stored: &str| {
        let challenge = body.proof.as_ref().map(|p| p.challenge.as_bytes()).unwrap_or_default();
        herd_pki::DeviceKey::from_pem(stored).is_ok_and(|key| key.verify(challenge, &signature).is_ok())
    };
    let claimant =
        Claimant { ids: &ids, info: &info, public_key: public_key.as_deref(), token_hash: &hash, enrollment };
    let now = to_millis(clock.now());
    // Two first registrations of one device can race on PostgreSQL; the loser's insert hits
    // the unique index, and its second attempt finds the winner's row.
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        let proof = match (&enroller, &presented_hash, &body.proof) {
            (Enroller::Member { .. }, _, _) => Proof::Operator,
            (_, Some(hash), _) => Proof::Token(hash),
            (_, None, Some(proof)) => Proof::Signature { challenge: &proof.challenge, verify: &verify },
            (_, None, None) => Proof::None,
        };
        match store.auto_register(&claimant, proof, now).await {
            Err(RegisterError::Store(error))
                if attempt == 1 && matches!(error, crate::store::StoreError::Unique(_)) =>
            {
                continue
            }
            other => break other,
        }
    };
    match outcome {
        Ok(Registration::Created(row)) => {
            Ok((StatusCode::CREATED, Json(RegisteredDevice { device: row.into(), device_token: secret })).into_response())
        }
        Ok(Registration::Existing(row)) => {
            Ok((StatusCode::OK, Json(RegisteredDevice { device: row.into(), device_token: secret })).into_response())
        }
        Ok(Registration::Claimed(claim)) => {
            Ok((StatusCode::ACCEPTED, Json(PendingRegistration { claim: claim.into(), device_token: secret }))
                .into_response())
        }
        Err(RegisterError::Ambiguous) => Err(ApiError::Conflict(
            "these identifiers belong to more than one device in this tenant; register with fewer identifiers or fix the devices".into(),
        )),
        Err(RegisterError::ProofFailed(why)) => Err(ApiError::Unauthorized(format!("the proof failed: {why}; nothing changed"))),
        Err(RegisterError::EnrollmentExhausted) => Err(ApiError::Unauthorized(RegisterError::EnrollmentExhausted.to_string())),
        Err(RegisterError::Store(error)) => Err(identifier_conflict(error)),
    }
}

/// A single-use challenge to sign with the device's registered key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Challenge {
    /// Sign these UTF-8 bytes, as they are.
    pub challenge: String,
    pub expires_at: DateTime<Utc>,
}

/// A challenge for a re-registration proof (enrollment token, or operator and above). Valid
/// for five minutes, once, in the caller's tenant.
#[utoipa::path(post, path = "/devices/auto-register/challenge", operation_id = "createRegistrationChallenge", tag = "devices", security(("enrollmentToken" = [])),
    responses((status = 201, body = Challenge)))]
async fn registration_challenge(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    enroller: Enroller,
) -> Result<(StatusCode, Json<Challenge>), ApiError> {
    let now = clock.now();
    let expires_at = now + CHALLENGE_TTL;
    let mut nonce = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let challenge = format!("{CHALLENGE_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce));
    herd_store::claims::create_challenge(enroller.scope(), &challenge, to_millis(expires_at), to_millis(now)).await?;
    Ok((StatusCode::CREATED, Json(Challenge { challenge, expires_at })))
}

/// Create a device by hand (admin). It starts offline with `lastSeen: null`.
#[utoipa::path(post, path = "/devices", operation_id = "createDevice", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])), request_body = CreateDeviceDto,
    responses((status = 201, body = RegisteredDevice)))]
async fn create_device(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    ApiJson(body): ApiJson<CreateDeviceDto>,
) -> Result<(StatusCode, Json<RegisteredDevice>), ApiError> {
    let scope = member.require(Role::Admin)?;
    let ids = Identifiers {
        serial_number: clean(&body.serial_number),
        mac_address: body.mac_address.as_deref().and_then(normalize_mac),
        android_id: clean(&body.android_id),
    };
    let info = DeviceInfo {
        name: None,
        model: clean(&body.model),
        manufacturer: clean(&body.manufacturer),
        os_version: None,
        app_version: None,
        location: clean(&body.location),
        tags: herd_domain::tags::normalize(&body.tags),
    };
    let secret = tokens::generate(TokenKind::Device);
    let row = DeviceStore::new(scope)
        .create(&ids, &info, body.name.trim(), &tokens::hash(&secret), to_millis(clock.now()))
        .await
        .map_err(identifier_conflict)?;
    Ok((StatusCode::CREATED, Json(RegisteredDevice { device: row.into(), device_token: secret })))
}

/// Filters of `GET /devices`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceListParams {
    /// `online` or `offline`.
    pub status: Option<String>,
    /// Case-insensitive search in name and serial number.
    pub q: Option<String>,
    /// Only devices with this tag.
    pub tag: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// List the tenant's devices, oldest first.
#[utoipa::path(get, path = "/devices", operation_id = "listDevices", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])), params(DeviceListParams),
    responses((status = 200, body = ListResponse<DeviceDto>)))]
pub(crate) async fn list_devices(
    State(heartbeats): State<Arc<crate::presence::HeartbeatBuffer>>,
    member: Member,
    ApiQuery(params): ApiQuery<DeviceListParams>,
) -> Result<Json<ListResponse<DeviceDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = PageParams { limit: params.limit, cursor: params.cursor.clone() }.page()?;
    let mut errors = FieldErrors::new();
    let status = match params.status.as_deref().map(str::parse::<DeviceStatus>).transpose() {
        Ok(status) => status,
        Err(_) => {
            errors.add("status", "must be online or offline");
            None
        }
    };
    errors.text("q", params.q.as_deref(), MAX_TEXT);
    errors.text("tag", params.tag.as_deref(), herd_domain::tags::MAX_TAG_LEN);
    errors.finish()?;
    let filter = DeviceFilter { status, q: params.q, tag: params.tag };
    let rows = DeviceStore::new(scope).list(&filter, &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, |row| overlay(&heartbeats, row).into())))
}

/// Shows a buffered heartbeat's `lastSeen` (not yet written) on a row read from the database.
fn overlay(heartbeats: &HeartbeatBuffer, mut row: DeviceRow) -> DeviceRow {
    if let Some(at) = heartbeats.pending_last_seen(&row.id) {
        if row.status == DeviceStatus::Online && row.last_seen.is_none_or(|seen| seen < at) {
            row.last_seen = Some(at);
        }
    }
    row
}

/// A device checks in (device token): `lastSeen` becomes now and `status` online.
#[utoipa::path(post, path = "/devices/connect", operation_id = "connectDevice", tag = "devices", security(("deviceToken" = [])), request_body(content = Option<ConnectDeviceDto>),
    responses((status = 200, body = ConnectResponse)))]
async fn connect(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    State(heartbeats): State<Arc<crate::presence::HeartbeatBuffer>>,
    device: DeviceAuth,
    OptionalJson(body): OptionalJson<ConnectDeviceDto>,
) -> Result<Json<ConnectResponse>, ApiError> {
    let body = body.unwrap_or_default();
    let report = ConnectReport {
        ip_address: body.ip_address.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()).map(|ip| ip.to_string()),
        app_version: clean(&body.app_version),
        os_version: clean(&body.os_version),
        firmware_version: clean(&body.firmware_version),
    };
    let now = clock.now();
    let millis = to_millis(now);
    let known = &device.device;
    let same = |reported: &Option<String>, stored: &Option<String>| reported.is_none() || reported == stored;
    let nothing_new = known.status == DeviceStatus::Online
        && same(&report.ip_address, &known.ip_address)
        && same(&report.app_version, &known.app_version)
        && same(&report.os_version, &known.os_version)
        && same(&report.firmware_version, &known.firmware_version);
    if nothing_new {
        // The hot path: an online device that only says "still here". Its lastSeen is
        // buffered and written in batches (see `presence` for what a crash can lose).
        let tenant = device.scope.tenant_id();
        heartbeats.record(device.device_id, tenant, millis);
        let mut row = device.device;
        row.last_seen = Some(row.last_seen.map_or(millis, |seen| seen.max(millis)));
        return Ok(Json(ConnectResponse {
            device: row.into(),
            server_time: now,
            pending_commands: device.pending_commands,
        }));
    }
    let row = DeviceStore::new(&device.scope)
        .connect(device.device_id, &report, millis)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("this device no longer exists".into()))?;
    Ok(Json(ConnectResponse { device: row.into(), server_time: now, pending_commands: device.pending_commands }))
}

/// The calling device's own record (device token).
#[utoipa::path(get, path = "/devices/self", operation_id = "getOwnDevice", tag = "devices", security(("deviceToken" = [])), responses((status = 200, body = DeviceDto)))]
async fn get_self(
    State(heartbeats): State<Arc<crate::presence::HeartbeatBuffer>>,
    device: DeviceAuth,
) -> Result<Json<DeviceDto>, ApiError> {
    let row = DeviceStore::new(&device.scope)
        .get(device.device_id)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("this device no longer exists".into()))?;
    Ok(Json(overlay(&heartbeats, row).into()))
}

/// One device of the tenant.
#[utoipa::path(get, path = "/devices/{id}", operation_id = "getDevice", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceDto)))]
pub(crate) async fn get_device(
    State(heartbeats): State<Arc<crate::presence::HeartbeatBuffer>>,
    member: Member,
    IdPath(id): IdPath<DeviceId>,
) -> Result<Json<DeviceDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = DeviceStore::new(scope).get(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    Ok(Json(overlay(&heartbeats, row).into()))
}

/// Change a device (operator and above).
#[utoipa::path(patch, path = "/devices/{id}", operation_id = "updateDevice", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])), request_body = UpdateDeviceDto,
    params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceDto)))]
async fn update_device(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<DeviceId>,
    ApiJson(body): ApiJson<UpdateDeviceDto>,
) -> Result<Json<DeviceDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    let trim = |field: &Option<Option<String>>| field.as_ref().map(|v| v.as_deref().map(|s| s.trim().to_string()));
    let patch = DevicePatch {
        name: body.name.as_deref().map(|s| s.trim().to_string()),
        serial_number: trim(&body.serial_number),
        mac_address: body.mac_address.as_ref().map(|v| v.as_deref().and_then(normalize_mac)),
        android_id: trim(&body.android_id),
        model: trim(&body.model),
        manufacturer: trim(&body.manufacturer),
        location: trim(&body.location),
        tags: body.tags.as_deref().map(herd_domain::tags::normalize),
    };
    let row = DeviceStore::new(scope)
        .update(id, &patch, to_millis(clock.now()))
        .await
        .map_err(identifier_conflict)?
        .ok_or_else(|| ApiError::not_found("device"))?;
    Ok(Json(row.into()))
}

/// Delete a device (operator and above). Its token stops working at once.
#[utoipa::path(delete, path = "/devices/{id}", operation_id = "deleteDevice", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id")), responses((status = 204, description = "deleted")))]
async fn delete_device(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<DeviceId>,
) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Operator)?;
    if DeviceStore::new(scope).delete(id, to_millis(clock.now())).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("device"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_normalise() {
        assert_eq!(normalize_mac("AA-BB-CC-DD-EE-FF").as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(normalize_mac("aabbccddeeff").as_deref(), Some("aa:bb:cc:dd:ee:ff"));
        assert_eq!(normalize_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(normalize_mac("zz:bb:cc:dd:ee:ff"), None);
    }

    #[test]
    fn auto_register_needs_an_identifier() {
        let err = AutoRegisterDto::default().validate().unwrap_err();
        match err {
            ApiError::Validation(errors) => assert_eq!(errors.len(), 3),
            other => panic!("{other:?}"),
        }
        let ok = AutoRegisterDto { android_id: Some("abc".into()), ..Default::default() };
        assert!(ok.validate().is_ok());
    }
}
