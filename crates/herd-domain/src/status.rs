//! The closed sets of values herd stores and sends as text. Each parses strictly: an unknown
//! text is an [`UnknownValue`](crate::UnknownValue) error, never a default.

use crate::text_enum;

text_enum!(
    /// A tenant member's role. Ordered: `Viewer < Operator < Admin`.
    #[derive(PartialOrd, Ord)]
    Role "role" {
        /// Reads everything in the tenant.
        Viewer = "viewer",
        /// Also manages devices, commands and updates.
        Operator = "operator",
        /// Also manages users, tokens, CA operations and rules.
        Admin = "admin",
    }
);

text_enum!(
    /// What a member credential is: an API token or a login session.
    MemberTokenKind "token kind" {
        Api = "api",
        Session = "session",
    }
);

text_enum!(
    /// A device's presence.
    DeviceStatus "device status" {
        Online = "online",
        Offline = "offline",
    }
);

text_enum!(
    /// A device certificate's lifecycle state.
    CertificateStatus "certificate status" {
        /// Issued for a future `notBefore`; the monitor activates it.
        Pending = "pending",
        /// Within its validity window and not revoked.
        Active = "active",
        /// Past `notAfter`.
        Expired = "expired",
        /// Revoked; final.
        Revoked = "revoked",
    }
);

text_enum!(
    /// Who made a certificate's key pair.
    KeySource "key source" {
        /// herd generated an RSA key (the seed's behaviour) and keeps it in the key store.
        Server = "server",
        /// The device generated its key and sent a CSR; herd never sees the private key.
        Csr = "csr",
    }
);

text_enum!(
    /// An alert's state.
    AlertStatus "alert status" {
        Open = "open",
        Resolved = "resolved",
    }
);

text_enum!(
    /// What a monitoring rule watches.
    Metric "metric" {
        /// CPU use, percent.
        Cpu = "cpu",
        /// Memory use, percent.
        Ram = "ram",
        /// Storage use, percent.
        Storage = "storage",
        /// Temperature, °C.
        Temperature = "temperature",
        /// Minutes since the device was last seen, while it is offline.
        Offline = "offline",
    }
);

impl Metric {
    /// The unit of the metric's values and thresholds, in words ("percent", "°C", "minutes").
    pub fn unit_name(self) -> &'static str {
        match self {
            Metric::Cpu | Metric::Ram | Metric::Storage => "percent",
            Metric::Temperature => "°C",
            Metric::Offline => "minutes",
        }
    }

    /// The unit as written after a value ("%", "°C", "min").
    pub fn unit_symbol(self) -> &'static str {
        match self {
            Metric::Cpu | Metric::Ram | Metric::Storage => "%",
            Metric::Temperature => "°C",
            Metric::Offline => "min",
        }
    }
}

text_enum!(
    /// How a value is compared with a threshold; the comparison true is a breach.
    Operator "operator" {
        Gt = "gt",
        Gte = "gte",
        Lt = "lt",
        Lte = "lte",
    }
);

impl Operator {
    /// True if `value` breaches `threshold` under this operator.
    pub fn breached(self, value: f64, threshold: f64) -> bool {
        match self {
            Operator::Gt => value > threshold,
            Operator::Gte => value >= threshold,
            Operator::Lt => value < threshold,
            Operator::Lte => value <= threshold,
        }
    }
}

text_enum!(
    /// How loud an alert is. Ordered: `Info < Warning < Critical`.
    #[derive(PartialOrd, Ord)]
    Severity "severity" {
        Info = "info",
        Warning = "warning",
        Critical = "critical",
    }
);

text_enum!(
    /// The state of one delivery of one event to one webhook.
    DeliveryStatus "delivery status" {
        /// Waiting for its `next_attempt_at`.
        Pending = "pending",
        /// Leased by a worker until `locked_until`.
        InFlight = "in_flight",
        /// The receiver answered 2xx.
        Succeeded = "succeeded",
        /// Out of retries.
        Dead = "dead",
    }
);

text_enum!(
    /// What a remote command asks a device to do. Each type has its own payload (see the
    /// server's `commands` module, which validates it).
    CommandType "command type" {
        Reboot = "reboot",
        RestartApp = "restart_app",
        LaunchApp = "launch_app",
        OpenUrl = "open_url",
        SetVolume = "set_volume",
        SetBrightness = "set_brightness",
        Screenshot = "screenshot",
        ClearCache = "clear_cache",
        InstallPackage = "install_package",
        /// A vendor extension: `{name, payload}`, passed through.
        Custom = "custom",
    }
);

text_enum!(
    /// Where one device's execution of a command stands.
    /// `queued → delivered → running → succeeded | failed`, or `expired` (not delivered before
    /// `expiresAt`) or `cancelled` (by an operator, before delivery).
    CommandState "command state" {
        /// Waiting for the device to fetch it.
        Queued = "queued",
        /// Handed to the device, not yet acknowledged (handed again after the redelivery delay).
        Delivered = "delivered",
        /// The device started it (and may report progress).
        Running = "running",
        Succeeded = "succeeded",
        /// The device reported an error, or no result came within the command's timeout.
        Failed = "failed",
        /// Not delivered before its `expiresAt`.
        Expired = "expired",
        /// Cancelled by an operator before delivery.
        Cancelled = "cancelled",
    }
);

impl CommandState {
    /// True for the states nothing leaves.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Expired | Self::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_moves_its_update_forward_or_to_failed_and_never_back() {
        use UpdateState::*;
        assert!(Notified.device_may_move_to(Downloading));
        assert!(Notified.device_may_move_to(Installed), "steps may be left out");
        assert!(Downloading.device_may_move_to(Downloading), "progress while downloading");
        assert!(Installing.device_may_move_to(Failed));
        assert!(Installed.device_may_move_to(Installed), "a repeated final report");
        assert!(!Installing.device_may_move_to(Downloading), "backwards");
        assert!(!Pending.device_may_move_to(Downloading), "not told yet");
        assert!(!Installed.device_may_move_to(Failed));
        assert!(!Failed.device_may_move_to(Installed));
        assert!(!Skipped.device_may_move_to(Downloading));
        assert!(!Cancelled.device_may_move_to(Downloading));
        assert!(!Notified.device_may_move_to(Pending));
    }

    #[test]
    fn every_value_round_trips_and_unknown_text_is_an_error() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(*role));
        }
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(*status));
        }
        let error = "superuser".parse::<Role>().unwrap_err();
        assert_eq!(error.to_string(), "\"superuser\" is not a known role");
        assert!("Online".parse::<DeviceStatus>().is_err(), "parsing is case-sensitive");
    }

    #[test]
    fn roles_and_severities_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
    }

    #[test]
    fn wire_form_is_the_stored_form() {
        assert_eq!(serde_json::to_string(&DeliveryStatus::InFlight).unwrap(), "\"in_flight\"");
        assert_eq!(serde_json::from_str::<Metric>("\"temperature\"").unwrap(), Metric::Temperature);
    }
}

text_enum!(
    /// Where a claim on an existing device stands (an unproven re-registration, see
    /// `POST /devices/auto-register`).
    ClaimStatus "claim status" {
        /// Waiting for an operator; the claimant's token does not work yet.
        Pending = "pending",
        /// The claimant's token became the device's token.
        Approved = "approved",
        /// Refused; the device was not touched.
        Rejected = "rejected",
    }
);

text_enum!(
    /// A tenant's rule for claims on existing devices.
    ClaimPolicy "claim policy" {
        /// Every claim waits for an operator (the default).
        Manual = "manual",
        /// Claims on devices that were never seen online are approved at once; others wait.
        ApproveNeverSeen = "approve_never_seen",
    }
);

text_enum!(
    /// What a software package is: an Android app, a firmware image, or any other file.
    PackageKind "package kind" {
        Apk = "apk",
        Firmware = "firmware",
        File = "file",
    }
);

text_enum!(
    /// Where a rollout stands. `ready` (created) → `running` (waves advance) ⇄ `paused`
    /// (by an operator, or by herd when a wave's failures cross the threshold) → `completed`;
    /// `cancelled` from any state but `completed`.
    RolloutState "rollout state" {
        Ready = "ready",
        Running = "running",
        Paused = "paused",
        Completed = "completed",
        Cancelled = "cancelled",
    }
);

impl RolloutState {
    /// True for the states nothing leaves.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

text_enum!(
    /// Where one device's update of a rollout stands:
    /// `pending → notified → downloading → downloaded → installing → installed | failed`,
    /// or `skipped` (already at or above the version, another model) or `cancelled` (the
    /// rollout was cancelled before the device started downloading).
    UpdateState "update state" {
        /// In a wave that has not reached it yet (or outside its maintenance window).
        Pending = "pending",
        /// herd queued an `install_package` command for it.
        Notified = "notified",
        Downloading = "downloading",
        Downloaded = "downloaded",
        Installing = "installing",
        Installed = "installed",
        /// The device reported a failure (with a reason).
        Failed = "failed",
        /// Not sent: the device already has this version or a newer one, or is another model.
        Skipped = "skipped",
        /// The rollout was cancelled before the device started.
        Cancelled = "cancelled",
    }
);

impl UpdateState {
    /// True for the states nothing leaves.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Installed | Self::Failed | Self::Skipped | Self::Cancelled)
    }

    /// The position along `pending → … → installed`; a device report may only move forward.
    /// `None` for the states that are not on that line (`failed`, `skipped`, `cancelled`).
    pub fn step(self) -> Option<u8> {
        match self {
            Self::Pending => Some(0),
            Self::Notified => Some(1),
            Self::Downloading => Some(2),
            Self::Downloaded => Some(3),
            Self::Installing => Some(4),
            Self::Installed => Some(5),
            Self::Failed | Self::Skipped | Self::Cancelled => None,
        }
    }

    /// Whether a device may report `to` while its update is in `self`: forward along the line
    /// from `notified` (steps may be left out), `failed` from any state a device has been told
    /// about, and the same state again (a progress update, or a repeat).
    pub fn device_may_move_to(self, to: UpdateState) -> bool {
        if self == to {
            return !matches!(self, Self::Pending | Self::Skipped | Self::Cancelled);
        }
        match (self.step(), to) {
            (Some(from), UpdateState::Failed) => (1..5).contains(&from),
            (Some(from), to) => match to.step() {
                Some(step) => from >= 1 && step > from && step >= 2,
                None => false,
            },
            (None, _) => false,
        }
    }
}
